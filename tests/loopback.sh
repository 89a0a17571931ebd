# loopback.sh — shared by the multi-process tests (sourced, POSIX sh): a
# scratch folder with cleanup, the synthetic three-task job on the tiny
# trunk, free ports.
# Before sourcing: set -eu, GRAFT and SRC (absolute paths), NAME.
# After: T (the scratch folder; KEEP=1 keeps it), PIDS (killed on exit),
# fail MESSAGE, free_port, and $T/run.conf over $T/data.
T=$(mktemp -d "/tmp/graft_test_${NAME}_XXXXXX")
PIDS=""
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# MPI is a build dependency: a missing mpirun is a broken setup, not a skip.
command -v mpirun >/dev/null 2>&1 || fail "mpirun not found: install Open MPI (openmpi-bin)"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

python3 "$SRC/scripts/synthetic_tasks.py" "$T/data" --train 240 --eval 32 >/dev/null
cat > "$T/run.conf" <<CONF
preset = tiny
tasks = majority:classification:$T/data/majority.tsv, pairs:classification:$T/data/pairs.tsv, shift:generation:$T/data/shift.tsv
seq = 32
method = lora
batch = 8
rounds = 4
local_steps = 6
eval_every_rounds = 2
checkpoint_every_rounds = 2
heartbeat_ms = 400
round_timeout_ms = 20000
eval_max = 32
gen_tokens = 8
threads = 1
seed = 7
CONF
