# Sourced by bench/gpu_check.sh and bench/cpu_check.sh (needs OUT set): one step of a check run.
# STEP_TIMEOUT=SECONDS stops a step that runs longer (a hung collective, say) and goes on to the next.
failed=()
step() {  # step NAME COMMAND...: run, keep the output in $OUT/NAME.log, note a failure
    local name=$1; shift
    echo "== $name"
    local start=$SECONDS
    if timeout -k 10 "${STEP_TIMEOUT:-0}" "$@" >"$OUT/$name.log" 2>&1; then echo "   ok ($((SECONDS - start)) s)"
    else echo "   FAILED after $((SECONDS - start)) s (see $OUT/$name.log)"; failed+=("$name"); fi
    tail -n 5 "$OUT/$name.log" | tr '\r' '\n' | grep -v 'it/s\|step/s' | tail -n 3 | sed 's/^/   /'
}
