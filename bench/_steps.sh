# Sourced by bench/gpu_check.sh and bench/cpu_check.sh (needs OUT set): one step of a check run.
failed=()
step() {  # step NAME COMMAND...: run, keep the output in $OUT/NAME.log, note a failure
    local name=$1; shift
    echo "== $name"
    if "$@" >"$OUT/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (see $OUT/$name.log)"; failed+=("$name"); fi
    tail -n 5 "$OUT/$name.log" | tr '\r' '\n' | grep -v 'it/s\|step/s' | tail -n 3 | sed 's/^/   /'
}
