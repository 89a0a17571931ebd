#!/usr/bin/env bash
# Round-time benchmark of a federated run: for each number of workers K, a
# short real run (the synthetic three-task job, every worker holding an IID
# shard of all three tasks) over MPI (`mpirun -np K+1 graft mpi`) or ZeroMQ
# (`graft run --workers K`), then the split of a round's wall time read from
# the coordinator's round_end events:
#   train   the local training of the worker whose reply came last (the
#           round's critical path); train_max / train_mean over all workers
#   comm    round - train - agg: encoding, sending and decoding both ways,
#           the workers' import of the modules, any wait
#   agg     the coordinator's aggregation
# averaged over rounds 2..R (round 1 also holds the workers' start-up), the
# bytes of one update (metrics only under MPI reductions), the bytes one rank
# contributes to the round's MPI reductions (reduce_KiB, 0 without them),
# and the coordinator's peak RSS (run_end). All K share
# this machine's cores: with more workers than cores each one trains slower,
# which is real for the round time but makes train dominate.
# The last line per K is `K=<k> round_ms=<..> comm_agg_pct=<..> holds=<yes|no>`
# for the target comm + agg < --target % of the round time (default 5).
# Usage: scripts/bench-round.sh [--workers "1 2 4 8"] [--transport mpi|zmq]
#            [--preset small] [--method lora] [--rounds 4] [--local_steps 10]
#            [--batch 16] [--seq 32] [--trunk FILE] [--target 5] [-- GRAFT OPTIONS]
# Options after `--` go to every graft process (e.g. --lora_shared_rank 16).
# Needs build/graft; mpirun for --transport mpi.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKERS="1 2 4 8"
TRANSPORT=mpi
PRESET=small
METHOD=lora
ROUNDS=4
LOCAL_STEPS=10
BATCH=16
SEQ=32
TRUNK=""
TARGET=5
EXTRA=()

die() { echo "bench-round: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --workers|--transport|--preset|--method|--rounds|--local_steps|--batch|--seq|--trunk|--target)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --workers) WORKERS="$2" ;;
        --transport) TRANSPORT="$2" ;;
        --preset) PRESET="$2" ;;
        --method) METHOD="$2" ;;
        --rounds) ROUNDS="$2" ;;
        --local_steps) LOCAL_STEPS="$2" ;;
        --batch) BATCH="$2" ;;
        --seq) SEQ="$2" ;;
        --trunk) TRUNK="$2" ;;
        --target) TARGET="$2" ;;
      esac
      shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case "$TRANSPORT" in mpi|zmq) ;; *) die "--transport must be mpi or zmq, not '$TRANSPORT'" ;; esac
for k in $WORKERS; do [[ "$k" =~ ^[1-9][0-9]*$ ]] || die "--workers: '$k' is not a positive integer"; done
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 2 ]] || die "--rounds must be >= 2 (round 1 is start-up)"

GRAFT="$ROOT/build/graft"
[ -x "$GRAFT" ] || die "$GRAFT not found: build it first (cmake -S . -B build && cmake --build build)"
[ "$TRANSPORT" = zmq ] || command -v mpirun >/dev/null || die "mpirun not found (openmpi-bin)"

TMP=$(mktemp -d /tmp/graft_bench_round_XXXXXX)
trap 'rm -rf "$TMP"' EXIT
python3 "$ROOT/scripts/synthetic_tasks.py" "$TMP/data" --train 2000 --eval 64 >/dev/null
D=$TMP/data
ARGS=(--preset "$PRESET" --method "$METHOD" --seq "$SEQ" --batch "$BATCH"
      --tasks "majority:classification:$D/majority.tsv,pairs:classification:$D/pairs.tsv,shift:generation:$D/shift.tsv"
      --rounds "$ROUNDS" --local_steps "$LOCAL_STEPS" --threads 1 --eval_every_rounds 1000000
      --checkpoint_every_rounds 1000000 --eval_max 16 --gen_tokens 4 --round_timeout_ms 600000
      --heartbeat_ms 2000)
[ -z "$TRUNK" ] || ARGS+=(--trunk "$TRUNK")
ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")

echo "bench-round: transport=$TRANSPORT preset=$PRESET method=$METHOD seq=$SEQ batch=$BATCH" \
     "local_steps=$LOCAL_STEPS rounds=$ROUNDS (mean of rounds 2..$ROUNDS) cores=$(nproc)" \
     "${EXTRA[*]+${EXTRA[*]}}"
printf '%3s %9s %9s %9s %9s %8s %7s %9s %10s %10s %9s\n' K round_ms train_ms train_max \
       train_mean comm_ms agg_ms comm+agg% update_KiB reduce_KiB coord_MiB
for k in $WORKERS; do
  out=$TMP/k$k
  if [ "$TRANSPORT" = mpi ]; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
      mpirun -np $((k + 1)) --oversubscribe "$GRAFT" mpi "${ARGS[@]}" --out "$out" \
      >"$out.out" 2>"$out.err" || { tail -20 "$out.err" >&2; die "K=$k: graft mpi failed"; }
  else
    OMP_NUM_THREADS=1 "$GRAFT" run --workers "$k" "${ARGS[@]}" --out "$out" \
      >"$out.out" 2>"$out.err" || { tail -20 "$out.err" >&2; die "K=$k: graft run failed"; }
  fi
  python3 - "$out/events.jsonl" "$k" "$TARGET" "$TMP/summary" <<'PY'
import json, sys
path, k, target, summary = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ev = [json.loads(l) for l in open(path)]
rounds = [e for e in ev if e["event"] == "round_end" and e["round"] >= 2]
end = [e for e in ev if e["event"] == "run_end"][-1]
if not rounds or not end.get("ok"):
    sys.exit("bench-round: K=%d: the run did not complete (see its log)" % k)
mean = lambda key: sum(e[key] for e in rounds) / len(rounds)
r, tr, ag, cm = mean("round_ms"), mean("train_ms_last"), mean("agg_ms"), mean("comm_ms")
pct = 100.0 * (cm + ag) / r
upd = mean("bytes_in") / max(1, mean("replies")) / 1024
red = sum(e.get("reduce_bytes", 0) for e in rounds) / len(rounds) / 1024
print("%3d %9.1f %9.1f %9.1f %9.1f %8.1f %7.2f %8.2f%% %10.1f %10.1f %9.1f" %
      (k, r, tr, mean("train_ms_max"), mean("train_ms_mean"), cm, ag, pct, upd, red,
       end["peak_rss_mib"]))
print("K=%d round_ms=%.1f comm_ms=%.1f agg_ms=%.2f comm_agg_pct=%.2f coordinator_peak_mib=%.1f "
      "holds=%s" % (k, r, cm, ag, pct, end["peak_rss_mib"], "yes" if pct < target else "no"))
with open(summary, "a") as f:
    f.write("%d %f %f\n" % (k, end["peak_rss_mib"], upd))
PY
done
# How the coordinator's peak memory grows with K, in updates (messages) per extra worker.
python3 - "$TMP/summary" <<'PY'
import sys
rows = sorted(tuple(map(float, l.split())) for l in open(sys.argv[1]))
if len(rows) >= 2:
    (k0, m0, u), (k1, m1, _) = rows[0], rows[-1]
    per = (m1 - m0) * 1024 / (k1 - k0)
    print("coordinator peak RSS: %.1f MiB at K=%d, %.1f MiB at K=%d: +%.0f KiB per extra worker "
          "= %.2f updates of %.0f KiB" % (m0, k0, m1, k1, per, per / u, u))
PY
