#!/bin/sh
# test_fed_eval.sh — federated evaluation (--eval_on workers|both) with real
# processes on loopback. Every worker evaluates the round's aggregated
# modules on its own rows and sends sufficient statistics; the coordinator
# adds them up per task. The property checked: the workers' statistics
# added up give exactly the coordinator's own evaluation of the same rows —
# the same example and decode counts, accuracy, macro-F1 and chrF (sums of
# integer counts), and loss, ECE and perplexity up to the order of float
# sums (1e-6) — at every dev evaluation and the final test one.
#  1. IID shards: graft run --workers 3 --eval_on both (each worker takes
#     every third evaluated example, under --eval_max too); each worker's
#     own metrics (per_worker, and a log line) count its share of the rows;
#  2. a shard directory from `graft data shard` (each client holds its share
#     of the dev and test rows): graft run --shards --eval_on both, with
#     --eval_max 0 and --decode_max 0 (every row on both sides); 2a. the
#     same with --eval_rows follow (each client's rows follow its train rows);
#     2b. the same with a coordinator whose task files hold only the dev
#     rows (no train or test rows): the same modules and test metrics;
#  3. mpirun graft mpi --eval_on workers: the workers' test evaluation
#     covers every test row; the run ends with the test lines on stdout;
#     with --eval_on both (MPI reductions) the two evaluations agree;
#  4. a coordinator whose own evaluation outlasts --round_timeout_ms (both)
#     still counts the workers' answers;
#  5. two workers with the same IID shard: the part is counted once and the
#     missing one reported (duplicate, parts_missing, complete false); 5a.
#     a worker killed and restarted while the workers evaluate is asked
#     again, and the evaluation is complete; 5b. evaluating every round on
#     the workers leaves the trained modules bit-identical (FedProx with kept
#     AdamW state; the two-stage channels method);
#  6. --eval_on (graft run) or --eval_rows (graft data shard) with an
#     unknown value is refused before anything runs.
# usage: test_fed_eval.sh GRAFT_BINARY SOURCE_DIR
set -eu
GRAFT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
SRC=$(cd "$2" && pwd)
NAME=fed_eval
. "$SRC/tests/loopback.sh"
cd "$T"

# same_evals EVENTS EXPECTED_EVALS: every coordinator eval event has a
# workers one for the same round, task and split that agrees with it.
same_evals() {
    python3 - "$1" "$2" <<'PY'
import json, sys
evs = [json.loads(l) for l in open(sys.argv[1]) if '"event":"eval"' in l]
by = {}
for e in evs:
    by.setdefault((e["round"], e["task"], e["split"]), {})[e["source"]] = e
want = int(sys.argv[2])
if len(by) != want:
    sys.exit(f"{len(by)} evaluations, expected {want}")
for key, pair in sorted(by.items()):
    if set(pair) != {"coordinator", "workers"}:
        sys.exit(f"{key}: sources {sorted(pair)}")
    c, w = pair["coordinator"], pair["workers"]
    if c["examples"] == 0 or not w["workers"]:
        sys.exit(f"{key}: nothing evaluated ({c['examples']} rows, workers {w['workers']})")
    pw = w["per_worker"]  # each worker's own metrics: its rows add up to the whole
    if sorted(pw) != w["workers"] or sum(m["examples"] for m in pw.values()) != w["examples"]:
        sys.exit(f"{key}: per_worker {pw} does not add up to {w['examples']} rows")
    for k in ("examples", "accuracy", "macro_f1", "chrf", "chrf_examples"):
        if k in c and c[k] != w[k]:
            sys.exit(f"{key}: {k} coordinator {c[k]} workers {w[k]}")
    for k in ("loss", "ece", "perplexity"):
        if k in c and abs(c[k] - w[k]) > 1e-6 * max(1.0, abs(c[k])):
            sys.exit(f"{key}: {k} coordinator {c[k]} workers {w[k]}")
# the comparison means something: a decode scored above 0 somewhere
if not any(p["coordinator"].get("chrf", 0) > 0 for p in by.values()):
    sys.exit("no generation evaluation with chrF > 0: nothing was compared")
print(f"{len(by)} evaluations agree")
PY
}

# ---- 1. IID shards: three workers, each a third of every evaluation ---------
timeout 120 "$GRAFT" run --config run.conf --workers 3 --eval_on both --out "$T/iid" \
    >"$T/iid.out" 2>"$T/iid.err" || { tail -20 "$T/iid.err" >&2; fail "graft run --eval_on both failed"; }
# rounds 4, eval_every_rounds 2: dev after round 2, test after round 4; 3 tasks
same_evals "$T/iid/events.jsonl" 6 >"$T/iid.cmp" || { cat "$T/iid.cmp" >&2; fail "IID: workers != coordinator"; }
grep -q '"source":"workers","workers":\["shard-0-of-3","shard-1-of-3","shard-2-of-3"\]' \
    "$T/iid/events.jsonl" || fail "IID: the eval events do not name the three workers"
grep -q 'eval round 4: majority per worker: shard-0-of-3 acc .* (n=11), shard-1-of-3 acc .* (n=11), shard-2-of-3 acc .* (n=10)' \
    "$T/iid.err" || fail "IID: no per-worker line"
[ "$(grep -c '(workers: 3)' "$T/iid.out")" -eq 3 ] || { cat "$T/iid.out" >&2; fail "IID: no test lines from the workers"; }
echo "ok 1 - IID shards: the workers' statistics add up to the coordinator's evaluation"

# ---- 2. graft data shard: clients hold their share of the dev/test rows ------
TASKS="majority:classification:$T/data/majority.tsv,pairs:classification:$T/data/pairs.tsv,shift:generation:$T/data/shift.tsv"
"$GRAFT" data shard --tasks "$TASKS" --clients 4 --tasks_per_client 2 --out "$T/shards" \
    >"$T/shard.out" 2>&1 || { cat "$T/shard.out" >&2; fail "graft data shard failed"; }
timeout 120 "$GRAFT" run --config run.conf --shards "$T/shards" --eval_on both --eval_max 0 \
    --decode_max 0 --out "$T/sh" >"$T/sh.out" 2>"$T/sh.err" ||
    { tail -20 "$T/sh.err" >&2; fail "graft run --shards --eval_on both failed"; }
same_evals "$T/sh/events.jsonl" 6 >"$T/sh.cmp" || { cat "$T/sh.cmp" >&2; fail "shards: workers != coordinator"; }
echo "ok 2 - shard directory: the clients' dev/test rows add up to the whole splits"

# ... and with each client's dev/test rows following its own train rows
# (--eval_rows follow): still the whole splits in union.
"$GRAFT" data shard --tasks "$TASKS" --clients 4 --tasks_per_client 2 --eval_rows follow \
    --out "$T/fshards" >"$T/fshard.out" 2>&1 || { cat "$T/fshard.out" >&2; fail "graft data shard --eval_rows follow failed"; }
timeout 120 "$GRAFT" run --config run.conf --shards "$T/fshards" --eval_on both --eval_max 0 \
    --decode_max 0 --out "$T/fsh" >"$T/fsh.out" 2>"$T/fsh.err" ||
    { tail -20 "$T/fsh.err" >&2; fail "graft run on --eval_rows follow shards failed"; }
same_evals "$T/fsh/events.jsonl" 6 >"$T/fsh.cmp" || { cat "$T/fsh.cmp" >&2; fail "follow: workers != coordinator"; }
echo "ok 2a - --eval_rows follow: the clients' rows still add up to the whole splits"

# ---- 2b. a coordinator without the data ------------------------------------------
# Its task files hold only the dev rows (which name every label): no train
# rows, no test rows. The workers hold the data and evaluate: the same
# modules and the same test metrics as run 2.
mkdir -p "$T/labels"
for t in majority pairs shift; do grep '^dev	' "$T/data/$t.tsv" > "$T/labels/$t.tsv"; done
LTASKS="majority:classification:$T/labels/majority.tsv,pairs:classification:$T/labels/pairs.tsv,shift:generation:$T/labels/shift.tsv"
timeout 120 "$GRAFT" run --config run.conf --tasks "$LTASKS" --shards "$T/shards" --eval_on workers \
    --eval_max 0 --decode_max 0 --out "$T/nodata" >"$T/nodata.out" 2>"$T/nodata.err" ||
    { tail -20 "$T/nodata.err" >&2; fail "a coordinator without train rows failed"; }
grep -q "has no train rows (this process trains nothing on it)" "$T/nodata.err" ||
    fail "the coordinator did not say its files have no train rows"
# The tensors bit for bit; the metadata differs: other task files make
# another run id.
python3 "$SRC/tests/compare_modules.py" "$T/sh/modules.safetensors" \
    "$T/nodata/modules.safetensors" || fail "a coordinator without the data ended with other modules"
python3 - "$T/sh/events.jsonl" "$T/nodata/events.jsonl" <<'PY' || fail "other test metrics without the data"
import json, sys
def tests(path, source):
    evs = [json.loads(l) for l in open(path) if '"event":"eval"' in l]
    return {e["task"]: {k: v for k, v in e.items() if k != "ts"}
            for e in evs if e["split"] == "test" and e["source"] == source}
a, b = tests(sys.argv[1], "workers"), tests(sys.argv[2], "workers")
assert len(a) == 3 and a == b, (a, b)
PY
echo "ok 2b - a coordinator whose files hold no train or test rows: same modules and test metrics"

# ---- 3. MPI ---------------------------------------------------------------------
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
    mpirun -np 3 --oversubscribe "$GRAFT" mpi --config run.conf --eval_on workers \
    --eval_max 0 --out "$T/mpi" >"$T/mpi.out" 2>"$T/mpi.err" ||
    { tail -20 "$T/mpi.err" >&2; fail "graft mpi --eval_on workers failed"; }
python3 - "$T/mpi/events.jsonl" "$T/data" <<'PY' || fail "MPI: the workers' test evaluation is incomplete"
import json, sys, os
evs = [json.loads(l) for l in open(sys.argv[1]) if '"event":"eval"' in l]
assert evs and all(e["source"] == "workers" for e in evs), "not every eval event is the workers'"
test = [e for e in evs if e["split"] == "test"]
assert len(test) == 3, test
for e in test:
    rows = sum(1 for l in open(os.path.join(sys.argv[2], e["task"] + ".tsv")) if l.startswith("test\t"))
    assert e["examples"] == rows, (e["task"], e["examples"], rows)
    assert e["workers"] == ["shard-0-of-2", "shard-1-of-2"], e["workers"]
PY
[ "$(grep -c '(workers: 2)' "$T/mpi.out")" -eq 3 ] || { cat "$T/mpi.out" >&2; fail "MPI: no test lines"; }
# --eval_on both over MPI (its reductions carry the modules): the workers'
# statistics add up to the coordinator's evaluation there too.
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
    mpirun -np 3 --oversubscribe "$GRAFT" mpi --config run.conf --eval_on both \
    --out "$T/mpib" >/dev/null 2>"$T/mpib.err" ||
    { tail -20 "$T/mpib.err" >&2; fail "graft mpi --eval_on both failed"; }
grep -q '"mpi_reductions":true' "$T/mpib/events.jsonl" || fail "MPI: no reductions (the case proves less)"
same_evals "$T/mpib/events.jsonl" 6 >"$T/mpib.cmp" || { cat "$T/mpib.cmp" >&2; fail "MPI both: workers != coordinator"; }
echo "ok 3 - graft mpi --eval_on workers covers every test row; --eval_on both agrees"

# ---- 4. the coordinator's own evaluation outlasts --round_timeout_ms --------------
# Its dev split 60 times over (1,920 rows a task; 200-450 ms here) against a
# 100 ms timeout: the workers' answers, read after it, still count (the
# timeout runs from the end of the coordinator's evaluation).
mkdir -p "$T/big"
for t in majority pairs shift; do
    grep -v '^dev	' "$T/data/$t.tsv" > "$T/big/$t.tsv"
    i=0; while [ $i -lt 60 ]; do grep '^dev	' "$T/data/$t.tsv" >> "$T/big/$t.tsv"; i=$((i + 1)); done
done
BTASKS="majority:classification:$T/big/majority.tsv,pairs:classification:$T/big/pairs.tsv,shift:generation:$T/big/shift.tsv"
timeout 120 "$GRAFT" run --config run.conf --tasks "$BTASKS" --workers 3 --eval_on both --eval_max 0 \
    --decode_max 0 --round_timeout_ms 100 --out "$T/slow" >"$T/slow.out" 2>"$T/slow.err" ||
    { tail -20 "$T/slow.err" >&2; fail "graft run with a slow coordinator evaluation failed"; }
ms=$(sed -n "s/.*eval round 2: the coordinator's evaluation took \([0-9]*\) ms.*/\1/p" "$T/slow.err")
[ "${ms:-0}" -gt 100 ] || fail "the coordinator's evaluation took ${ms:-?} ms, not over the 100 ms timeout: the case proves nothing"
same_evals "$T/slow/events.jsonl" 6 >"$T/slow.cmp" || { cat "$T/slow.cmp" >&2; fail "slow coordinator: workers != coordinator"; }
! grep -q "no answer from worker" "$T/slow.err" || fail "answers read after the coordinator's evaluation were dropped"
echo "ok 4 - a coordinator evaluation longer than --round_timeout_ms (${ms} ms) loses no answer"

# ---- 5. two workers with the same IID shard -------------------------------------
# graft coordinator and two graft worker processes, both --shard 0/2: part
# 0 is counted once (the first name), part 1 is missing, and the eval
# events say so (duplicate, parts_missing, complete false).
EP="ipc://$T/coord.sock"
"$GRAFT" coordinator --bind "$EP" --workers 2 --config run.conf --eval_on workers --eval_max 0 \
    --out "$T/dup" >"$T/dup.out" 2>"$T/dup.err" &
PIDS="$PIDS $!"
for w in a b; do
    "$GRAFT" worker --connect "$EP" --config run.conf --name $w --shard 0/2 >/dev/null 2>&1 &
    PIDS="$PIDS $!"
done
for p in $PIDS; do wait "$p" || fail "the duplicate-shard run failed (see $T/dup.err)"; done
PIDS=""
python3 - "$T/dup/events.jsonl" <<'PY' || fail "duplicate shard: wrong coverage in the eval events"
import json, sys
evs = [json.loads(l) for l in open(sys.argv[1]) if '"event":"eval"' in l]
assert len(evs) == 6, len(evs)
for e in evs:
    assert e["workers"] == ["a"] and e["duplicate"] == ["b"], e
    assert e["parts_missing"] == 1 and e["complete"] is False and e["missing"] == [], e
    assert e["examples"] == 16, e  # part 0 of 2 of 32 rows
PY
grep -q "worker 'b' evaluated an IID part that another worker already did" "$T/dup.err" ||
    fail "no warning for the duplicate shard"
echo "ok 5 - the same IID shard twice: counted once, the missing part reported"

# ---- 5a. a worker restarted while the workers evaluate -----------------------------
# Worker b is killed as soon as the coordinator has asked for the round-2
# dev evaluation (its dev split 300 times over: about a second of work) and
# started again under the same name: the coordinator asks it again for what
# it had not answered, and the evaluation is complete.
mkdir -p "$T/huge"
for t in majority pairs shift; do
    grep -v '^dev	' "$T/data/$t.tsv" > "$T/huge/$t.tsv"
    grep '^dev	' "$T/data/$t.tsv" > "$T/huge/dev1"
    i=0; while [ $i -lt 300 ]; do cat "$T/huge/dev1"; i=$((i + 1)); done >> "$T/huge/$t.tsv"
done
HTASKS="majority:classification:$T/huge/majority.tsv,pairs:classification:$T/huge/pairs.tsv,shift:generation:$T/huge/shift.tsv"
EP="ipc://$T/coord2.sock"
"$GRAFT" coordinator --bind "$EP" --workers 2 --config run.conf --tasks "$HTASKS" \
    --eval_on workers --eval_max 0 --decode_max 64 --rounds 3 --eval_every_rounds 2 \
    --out "$T/re" >"$T/re.out" 2>"$T/re.err" &
COORD=$!
PIDS="$COORD"
"$GRAFT" worker --connect "$EP" --config run.conf --tasks "$HTASKS" --name a --shard 0/2 \
    >/dev/null 2>"$T/re-a.err" &
WA=$!
"$GRAFT" worker --connect "$EP" --config run.conf --tasks "$HTASKS" --name b --shard 1/2 \
    >/dev/null 2>"$T/re-b.err" &
WB=$!
PIDS="$PIDS $WA $WB"
i=0
until grep -q "eval round 2: asked 2 workers" "$T/re.err"; do
    i=$((i + 1)); [ $i -lt 1200 ] || fail "the coordinator never asked for the evaluation"
    sleep 0.05
done
kill -9 $WB
"$GRAFT" worker --connect "$EP" --config run.conf --tasks "$HTASKS" --name b --shard 1/2 \
    >/dev/null 2>"$T/re-b2.err" &
WB2=$!
PIDS="$PIDS $WB2"
wait $COORD || { tail -20 "$T/re.err" >&2; fail "the coordinator failed after a worker restart"; }
wait $WA || fail "worker a failed"
wait $WB2 || fail "the restarted worker b failed"
PIDS=""
grep -q "eval round 2: asked worker 'b' again for its 3 unanswered tasks" "$T/re.err" ||
    { grep "eval round 2" "$T/re.err" >&2; fail "the restarted worker was not asked again"; }
python3 - "$T/re/events.jsonl" <<'PY' || fail "restart: the evaluation is not complete"
import json, sys
evs = [json.loads(l) for l in open(sys.argv[1]) if '"event":"eval"' in l]
dev = [e for e in evs if e["round"] == 2]
assert len(dev) == 3 and all(e["split"] == "dev" for e in dev), dev
for e in dev:
    assert e["complete"] is True and e["workers"] == ["a", "b"] and e["examples"] == 9600, e
PY
echo "ok 5a - a worker restarted during the evaluation is asked again; the evaluation is complete"

# ---- 5b. evaluating on the workers leaves their training alone ----------------
# The worker imports the modules it is asked to evaluate; its optimiser
# state, FedProx anchor and two-stage channels must not move. The same job
# evaluated every round by the coordinator or by the workers ends with the
# same bytes.
for m in "lora --aggregate fedavg,fedprox --fedprox_mu 0.1 --keep_optimizer_state true" \
         "lntune,channels --channels_k 4"; do
    for on in coordinator workers; do
        rm -rf "$T/same-$on" # the previous method's run
        # shellcheck disable=SC2086 # $m holds several options
        timeout 120 "$GRAFT" run --config run.conf --workers 2 --method $m --eval_every_rounds 1 \
            --eval_on $on --out "$T/same-$on" >/dev/null 2>"$T/same-$on.err" ||
            { tail -20 "$T/same-$on.err" >&2; fail "--method $m --eval_on $on failed"; }
    done
    cmp "$T/same-coordinator/modules.safetensors" "$T/same-workers/modules.safetensors" ||
        fail "--method $m: evaluating on the workers changed the trained modules"
done
echo "ok 5b - evaluation on the workers leaves training alone (FedProx, kept AdamW state, channels)"

# ---- 6. a bad value -------------------------------------------------------------
if "$GRAFT" run --config run.conf --eval_on nowhere --out "$T/bad" >/dev/null 2>"$T/bad.err"; then
    fail "--eval_on nowhere was accepted"
fi
grep -q "unknown --eval_on 'nowhere' (coordinator, workers or both)" "$T/bad.err" ||
    { cat "$T/bad.err" >&2; fail "no clear error for --eval_on nowhere"; }
[ ! -e "$T/bad/events.jsonl" ] || fail "a refused run wrote events"
if "$GRAFT" data shard --tasks "$TASKS" --clients 2 --eval_rows skewed --out "$T/bad2" \
    >/dev/null 2>"$T/bad2.err"; then fail "--eval_rows skewed was accepted"; fi
grep -q "eval_rows 'skewed' is not one of roundrobin, follow" "$T/bad2.err" ||
    { cat "$T/bad2.err" >&2; fail "no clear error for --eval_rows skewed"; }
echo "ok 6 - --eval_on nowhere and --eval_rows skewed are refused"
