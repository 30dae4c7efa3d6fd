#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (CI has none, so these skip there).
# Usage, from the repository root: bash bench/gpu_check.sh [OUT_DIR]
# Installs what it needs (make install), or, with PY=/path/to/python set, uses that interpreter
# as it is (a machine with CUDA torch and wavedil's dependencies but no package index), then:
#   1. the GPU tests: CUDA-graph generation (tests/test_fast_cuda.py), float16 + scaler training;
#   2. bench/generation.py --cuda: ref30 samples/s, eager step vs fast (CUDA graphs), B = 1/8/64/256;
#      bench/training.py --device cuda --profile: ref30 training samples/s at fp32 (and TF32),
#      bf16 and fp16 (B = 4, T = 16,000) beside the per-layer nn.Conv1d baseline, with each
#      variant's busiest kernels;
#   3. a short training run under torchrun on the GPU with nccl and float16, then a resume
#      and CUDA generation from its checkpoint;
#   4. the bundled vocoder on CUDA, fast (CUDA graphs) and torch (eager): the same file.
# Each step's output goes to OUT_DIR (default gpu_check_out/); the exit status is non-zero if
# any step failed, and the failing steps are listed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
if [[ -z "${PY:-}" ]]; then
    make install >/dev/null || { echo "make install failed"; exit 1; }
    PY=.venv/bin/python
fi
source bench/_steps.sh  # step NAME COMMAND...
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 1
$PY -c "import torch; print(torch.cuda.get_device_name(0), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
# the CUDA tests, and the CPU checks of the same loop beside them (the rest of tests/ runs in CI)
step tests $PY -m pytest -q -p no:cacheprovider -rs tests/test_fast_cuda.py tests/test_precision.py::test_fp16_with_scaler_on_gpu
step bench_cuda sh -c "$PY bench/generation.py --cuda --budget 2 --repeat 2 > '$OUT/bench_cuda.json'"
VARIANTS=baseline,baseline-bf16,baseline-fp16,wavedil,wavedil-tf32,wavedil-bf16,wavedil-fp16  # bf16 takes plain ops on CUDA
step bench_training sh -c "$PY bench/training.py --device cuda --variants $VARIANTS --steps 20 --warmup 3 \
    --no-data-wait --profile > '$OUT/bench_training.json'"
RUN="$OUT/ddp_run"
TRAIN=(experiment=speech8k model=tiny trainer=debug trainer.max_steps=40 trainer.device=cuda
       trainer.precision=16 trainer.dist_backend=nccl "hydra.run.dir=$RUN")
step ddp_nccl_fp16 $PY -m torch.distributed.run --nproc-per-node=1 -m wavedil train "${TRAIN[@]}"
step ddp_resume $PY -m torch.distributed.run --nproc-per-node=1 -m wavedil train "${TRAIN[@]}" trainer.max_steps=60 trainer.resume=true
step generate_cuda $PY -m wavedil generate "$RUN" -o "$OUT/generated.wav" --seconds 2 --batch 4 --device cuda
# the bundled vocoder on a real recording (4 s): CUDA graphs against the eager step, same seed, same file
WAV=data/speech8k/wavs/invalid.wav
step vocode_cuda_fast $PY -m wavedil vocode --model speech8k-vocoder "$WAV" -o "$OUT/vocoded_fast.wav" --device cuda --seed 3
step vocode_cuda_torch $PY -m wavedil vocode --model speech8k-vocoder "$WAV" -o "$OUT/vocoded_torch.wav" --device cuda \
    --seed 3 --backend torch
step vocode_same_samples cmp "$OUT/vocoded_fast.wav" "$OUT/vocoded_torch.wav"
echo
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all GPU checks passed; figures in $OUT/bench_cuda.json and $OUT/bench_training.json"
