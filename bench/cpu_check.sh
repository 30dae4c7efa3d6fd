#!/usr/bin/env bash
# Every CPU speed figure issue #14 asks of a machine, in one run: what a session on the AMD EPYC
# (AVX2 only) runs to record its figures beside the Intel Xeon's (bench/README.md).
# Usage, from the repository root, on an otherwise idle machine (pause a background training run
# with kill -STOP PID first, kill -CONT PID after): bash bench/cpu_check.sh [OUT_DIR] [--quick]
# (--quick: every script's smoke run, to check the steps work: no figures)
# Installs what it needs (make install), then writes each step's JSON and log to OUT_DIR
# (default cpu_check_out/):
#   1. the CPU's model and the flags that matter (AVX2, AVX-512, bf16, VNNI, AMX);
#   2. bench/generation.py: ref30 in every weight mode at B = 1, 16, 64, 256 against fp32 fast,
#      the eager step and the naive recompute (the int8 / fp32 ratio at B = 1 is the aim: >= 1.6);
#   3. bench/generation.py --stream: the streaming vocoders' real-time factors, every mode;
#   4. bench/batch1.py and bench/batch_ceiling.py: where batch 1 and large batches spend their time;
#   5. bench/step.py: the lean reference step against the former one.
# The exit status is non-zero if any step failed; the failing steps are listed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-cpu_check_out}
QUICK=${2:-}
[[ -z $QUICK || $QUICK == --quick ]] || { echo "usage: bash bench/cpu_check.sh [OUT_DIR] [--quick]"; exit 2; }
mkdir -p "$OUT"
make install >/dev/null || { echo "make install failed"; exit 1; }
PY=.venv/bin/python
source bench/_steps.sh  # step NAME COMMAND...
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$OUT/cpu.txt"
grep -m1 -o -w -E "avx2|fma|f16c|avx512f|avx512_bf16|avx512_vnni|avx_vnni|amx_bf16|amx_int8" /proc/cpuinfo | sort -u | tr '\n' ' ' | tee -a "$OUT/cpu.txt"
echo
step generation sh -c "$PY bench/generation.py $QUICK > '$OUT/generation.json'"
step generation_stream sh -c "$PY bench/generation.py --stream $QUICK > '$OUT/generation_stream.json'"
step batch1 sh -c "$PY bench/batch1.py $QUICK > '$OUT/batch1.json'"
step batch_ceiling sh -c "$PY bench/batch_ceiling.py $QUICK > '$OUT/batch_ceiling.json'"
step step sh -c "$PY bench/step.py $QUICK > '$OUT/step.json'"
echo
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all CPU checks ran; figures in $OUT/*.json (record them in bench/README.md with the CPU and its flags)"
