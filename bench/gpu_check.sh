#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (CI has none, so these skip there).
# Usage, from the repository root: bash bench/gpu_check.sh [OUT_DIR]
# Installs what it needs (make install), then:
#   1. the GPU tests: CUDA-graph generation (tests/test_fast_cuda.py), float16 + scaler training;
#   2. bench/generation.py --cuda: ref30 samples/s, eager step vs fast (CUDA graphs), B = 1/64/256;
#   3. a short training run under torchrun on the GPU with nccl and float16, then a resume
#      and CUDA generation from its checkpoint.
# Each step's output goes to OUT_DIR (default gpu_check_out/); the exit status is non-zero if
# any step failed, and the failing steps are listed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
make install >/dev/null || { echo "make install failed"; exit 1; }
PY=.venv/bin/python
source bench/_steps.sh  # step NAME COMMAND...
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 1
$PY -c "import torch; print(torch.cuda.get_device_name(0), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
step tests $PY -m pytest -q -p no:cacheprovider -rs tests/test_fast_cuda.py tests/test_precision.py
step bench_cuda sh -c "$PY bench/generation.py --cuda --budget 2 --repeat 2 > '$OUT/bench_cuda.json'"
RUN="$OUT/ddp_run"
TRAIN=(experiment=speech8k model=tiny trainer=debug trainer.max_steps=40 trainer.device=cuda
       trainer.precision=16 trainer.dist_backend=nccl "hydra.run.dir=$RUN")
step ddp_nccl_fp16 .venv/bin/torchrun --nproc-per-node=1 -m wavedil train "${TRAIN[@]}"
step ddp_resume .venv/bin/torchrun --nproc-per-node=1 -m wavedil train "${TRAIN[@]}" trainer.max_steps=60 trainer.resume=true
step generate_cuda .venv/bin/wavedil generate "$RUN" -o "$OUT/generated.wav" --seconds 2 --batch 4 --device cuda
echo
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all GPU checks passed; figures in $OUT/bench_cuda.json"
