#!/bin/sh
# test_personal.sh — personalised federated runs (--personalize, DESIGN §4:
# task modules "kept on the worker when the run is personalised") with real
# processes: ZeroMQ on loopback and mpirun.
#  1. two clients whose labels conflict: task `last` asks for the last letter
#     of six, and client-001's labels are shifted by one letter (a -> b, ...
#     d -> a). A global head cannot serve both; a personal one can:
#     - with --personalize each client's test accuracy is at least 0.95
#       (measured 1.0 both), without it client-001's is at most 0.5
#       (measured 0.175);
#     - the task scopes travel once: round 1 sends more than round 2, and
#       every update carries only the shared scope (bytes in per round
#       below the unpersonalised run's);
#     - each worker's --save file (OUT/workers/NAME.safetensors), run
#       through `graft eval` on that client's rows, gives its per_worker
#       metrics; the other client's file on the same rows scores at most
#       0.5: the modules are the client's own;
#     - graft eval on the coordinator's checkpoint warns that its task
#       modules are initial values;
#  2. one worker holding all the data with --method head (no shared scope:
#     purely local training) ends, over 3 rounds of 4 steps, with the same
#     head, bit for bit, and the same test metrics as `graft train --steps
#     12`: the personal head keeps its values and AdamW state from round to
#     round; with --method lora and --keep_optimizer_state the same within
#     1e-6 (the shared scope goes through the fixed-point aggregation);
#  3. mpirun graft mpi --personalize, with MPI reductions and with update
#     messages, writes the same bytes (coordinator checkpoint and every
#     worker's file) as graft run;
#  3a. --personal_from 4 of 6 rounds: rounds 1-3 average the task scopes as
#      without --personalize (updates carry them), rounds 4-6 keep them on
#      the workers, which start from the cohort's average of round 3 and end
#      at test accuracy >= 0.95 each; graft mpi writes the same bytes;
#      --personal_from past --rounds is refused;
#  4. --personalize with --eval_on coordinator, --logit_adjust or --method
#     channels is refused before anything runs, naming the conflict;
#  5. graft coordinator and graft worker --save: a worker SIGKILLed and
#     restarted with its --save file takes its own task modules back (its
#     next round's training loss stays below 0.02, measured 1e-4); restarted
#     once more after the file was deleted, it starts them over (above 0.05,
#     measured 0.16); a file of another run is not taken but moved aside
#     (FILE.other-run), not overwritten; each restart is assigned within 2 s
#     of its hello.
#  5a. --personal_from 4: a worker SIGKILLed once round 3 closed and
#     restarted (no --save file yet) ends with the same modules, its own
#     and the coordinator's, as an uninterrupted run: a task scope turning
#     personal starts a fresh optimiser state either way.
#  6. graft run resumed with more --rounds (another run id) continues the
#     run of its checkpoint: run_start names it in earlier_runs, each
#     worker takes its --save file back (round 4's loss below 0.02), none
#     is moved aside;
#  6a. workers outliving a killed coordinator: started again with --resume
#      and more rounds, it continues the run and they keep their own
#      modules (next loss below 0.02); started afresh with other options,
#      it is a new job and their modules start over (round 1's loss again,
#      above 0.05), their --save files of the old job kept aside.
# usage: test_personal.sh GRAFT_BINARY SOURCE_DIR
set -eu
GRAFT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
SRC=$(cd "$2" && pwd)
NAME=personal
. "$SRC/tests/loopback.sh"
compare() { python3 "$SRC/tests/compare_modules.py" "$@"; }
cd "$T"

# ---- 1. conflicting clients ---------------------------------------------------
python3 - "$T" <<'PY'
import os, random, sys
out, rng, L = sys.argv[1], random.Random(3), "abcd"
rows = []
for c in range(2):
    mine = []
    for split, n in (("train", 200), ("dev", 40), ("test", 40)):
        for i in range(n):
            s = "".join(rng.choice(L) for _ in range(6))
            y = s[-1] if c == 0 else L[(L.index(s[-1]) + 1) % 4]
            mine.append(f"{split}\t{y}\tc{c}g{i}\t{s}\n")
    d = os.path.join(out, "sh", "client-%03d" % c)
    os.makedirs(d)
    open(os.path.join(d, "last.tsv"), "w").writelines(mine)
    rows += mine
open(os.path.join(out, "last.tsv"), "w").writelines(rows)
open(os.path.join(out, "sh", "shards.tsv"), "w").write("client-000\tlast\nclient-001\tlast\n")
PY
cat > last.conf <<CONF
preset = tiny
tasks = last:classification:$T/last.tsv
seq = 16
method = lora
batch = 8
rounds = 6
local_steps = 10
eval_every_rounds = 3
heartbeat_ms = 400
round_timeout_ms = 20000
threads = 1
seed = 7
head_lr = 2e-2
CONF
for p in true false; do
    timeout 90 "$GRAFT" run --config last.conf --shards sh --personalize $p --eval_on workers \
        --out "$T/last-$p" >"$T/last-$p.out" 2>"$T/last-$p.err" ||
        { tail -20 "$T/last-$p.err" >&2; fail "graft run --personalize $p failed"; }
done
grep -q 'task scopes personal (not aggregated)' "$T/last-true.err" ||
    fail "the coordinator does not say the run is personalised"
grep -q 'worker client-001: a personalised run' "$T/last-true.err" ||
    fail "the worker does not say the run is personalised"
"$GRAFT" report --no_plots --out "$T/rep" "$T/last-true" "$T/last-false" >"$T/rep.txt" 2>&1 ||
    fail "graft report failed"
grep -q '^last-true  *run  *lora+personal ' "$T/rep.txt" && grep -q '^last-false  *run  *lora  ' \
    "$T/rep.txt" || { cat "$T/rep.txt" >&2; fail "graft report does not mark the personal run"; }
python3 - "$T/last-true/events.jsonl" "$T/last-false/events.jsonl" <<'PY' ||
import json, sys
def load(path):
    evs = [json.loads(l) for l in open(path)]
    test = [e for e in evs if e["event"] == "eval" and e["split"] == "test"]
    assert len(test) == 1, f"{path}: {len(test)} test evaluations"
    return [e for e in evs if e["event"] == "round_end"], test[0]
(rp, tp), (rg, tg) = load(sys.argv[1]), load(sys.argv[2])
acc = lambda e, w: e["per_worker"][w]["accuracy"]
for w in ("client-000", "client-001"):
    assert acc(tp, w) >= 0.95, f"personal {w}: accuracy {acc(tp, w)}"
assert acc(tg, "client-001") <= 0.5, f"global client-001: accuracy {acc(tg, 'client-001')}"
# Task scopes go down until each worker has answered once, never up.
assert rp[0]["bytes_out"] > rp[1]["bytes_out"] == rp[2]["bytes_out"], \
    [r["bytes_out"] for r in rp]
assert all(p["bytes_in"] < g["bytes_in"] for p, g in zip(rp[1:], rg[1:])), \
    ([r["bytes_in"] for r in rp], [r["bytes_in"] for r in rg])
assert rg[0]["bytes_out"] == rg[1]["bytes_out"], [r["bytes_out"] for r in rg]
PY
    fail "personalised vs global: see above"
python3 - "$T/last-true/events.jsonl" > "$T/per_worker.txt" <<'PY'
import json, sys
e = [json.loads(l) for l in open(sys.argv[1]) if '"split":"test"' in l][0]
for w, m in sorted(e["per_worker"].items()):
    print(f"{w} {'last':<20s} test  n={m['examples']:<5d} acc {m['accuracy']:.4f}  "
          f"macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  loss {m['loss']:.4f}")
PY
for c in client-000 client-001; do
    [ -s "$T/last-true/workers/$c.safetensors" ] || fail "no saved modules for $c"
    timeout 30 "$GRAFT" eval --config last.conf --tasks "last:classification:$T/sh/$c/last.tsv" \
        --resume "$T/last-true/workers/$c.safetensors" --out "$T/ev-$c" >"$T/ev-$c.out" \
        2>"$T/ev-$c.err" || { cat "$T/ev-$c.err" >&2; fail "graft eval of $c's modules failed"; }
    got="$c $(cat "$T/ev-$c.out")"
    grep -qxF "$got" "$T/per_worker.txt" ||
        { cat "$T/per_worker.txt" >&2; fail "$c's saved modules evaluate to: $got"; }
done
timeout 30 "$GRAFT" eval --config last.conf --tasks "last:classification:$T/sh/client-001/last.tsv" \
    --resume "$T/last-true/workers/client-000.safetensors" --out "$T/ev-x" >"$T/ev-x.out" \
    2>/dev/null || fail "graft eval of client-000's modules on client-001's rows failed"
python3 -c "import sys; a = float(sys.argv[1]); sys.exit(a > 0.5)" \
    "$(sed 's/.* acc \([0-9.]*\) .*/\1/' "$T/ev-x.out")" ||
    fail "client-000's modules serve client-001: $(cat "$T/ev-x.out")"
timeout 30 "$GRAFT" eval --config last.conf --resume "$T/last-true/modules.safetensors" \
    --out "$T/ev-c" >/dev/null 2>"$T/ev-c.err" || fail "graft eval of the coordinator's checkpoint"
grep -q "coordinator's checkpoint of a personalised run" "$T/ev-c.err" ||
    fail "graft eval does not warn about the coordinator's initial task modules"
echo "ok 1 - conflicting clients: personal heads serve each (acc >= 0.95), the global one not; task scopes sent once, never returned; saved modules give the per-worker metrics"

# ---- 2. one worker: purely local training is graft train ----------------------
# (The sampler and schedule arguments are test_federated.sh case 2's.)
strip() { sed 's/  (workers: [0-9]*)$//' "$1"; }
for m in head lora; do
    keep=false; atol=0
    [ $m = lora ] && keep=true && atol=1e-6
    timeout 60 "$GRAFT" train --config run.conf --method $m --steps 12 --out "$T/c-$m" \
        >"$T/c-$m.out" 2>"$T/c-$m.err" || fail "graft train --method $m failed"
    timeout 60 "$GRAFT" run --config run.conf --method $m --workers 1 --rounds 3 --local_steps 4 \
        --personalize --keep_optimizer_state $keep --out "$T/p-$m" >"$T/p-$m.out" \
        2>"$T/p-$m.err" || { tail -20 "$T/p-$m.err" >&2; fail "graft run --method $m failed"; }
    compare "$T/c-$m/modules.safetensors" "$T/p-$m/workers/shard-0-of-1.safetensors" \
        --atol $atol >"$T/cmp-$m.txt" ||
        { cat "$T/cmp-$m.txt" >&2; fail "--method $m: the worker's modules are not graft train's"; }
    [ "$(strip "$T/p-$m.out")" = "$(cat "$T/c-$m.out")" ] ||
        { cat "$T/p-$m.out" "$T/c-$m.out" >&2; fail "--method $m: test metrics differ"; }
done
# It can fail: restarting the shared scope's AdamW state every round moves it.
timeout 60 "$GRAFT" run --config run.conf --workers 1 --rounds 3 --local_steps 4 --personalize \
    --out "$T/p-reset" >/dev/null 2>&1 || fail "graft run --personalize (reset) failed"
compare "$T/c-lora/modules.safetensors" "$T/p-reset/workers/shard-0-of-1.safetensors" \
    --atol 1e-6 --expect-differ >/dev/null || fail "the lora comparison above proves nothing"
echo "ok 2 - one worker: a personal head over 3 rounds is graft train's, bit for bit; lora with kept state within 1e-6"

# ---- 3. graft mpi: the same bytes -----------------------------------------------
for coll in true false; do
    timeout 120 mpirun -np 3 --oversubscribe "$GRAFT" mpi --config last.conf --shards sh \
        --personalize --mpi_collectives $coll --out "$T/mpi-$coll" >"$T/mpi-$coll.out" \
        2>"$T/mpi-$coll.err" || { tail -20 "$T/mpi-$coll.err" >&2; fail "graft mpi ($coll) failed"; }
    cmp "$T/last-true/modules.safetensors" "$T/mpi-$coll/modules.safetensors" ||
        fail "graft mpi --mpi_collectives $coll: another coordinator checkpoint"
    for c in client-000 client-001; do
        cmp "$T/last-true/workers/$c.safetensors" "$T/mpi-$coll/workers/$c.safetensors" ||
            fail "graft mpi --mpi_collectives $coll: $c's modules differ"
    done
done
timeout 90 "$GRAFT" run --config last.conf --shards sh --personalize --personal_from 4 \
    --out "$T/from" >"$T/from.out" 2>"$T/from.err" ||
    { tail -20 "$T/from.err" >&2; fail "graft run --personal_from 4 failed"; }
timeout 120 mpirun -np 3 --oversubscribe "$GRAFT" mpi --config last.conf --shards sh \
    --personalize --personal_from 4 --out "$T/mpi-from" >/dev/null 2>"$T/mpi-from.err" ||
    { tail -20 "$T/mpi-from.err" >&2; fail "graft mpi --personal_from 4 failed"; }
for f in modules workers/client-000 workers/client-001; do
    cmp "$T/from/$f.safetensors" "$T/mpi-from/$f.safetensors" ||
        fail "graft mpi --personal_from 4: $f differs from graft run's"
done
echo "ok 3 - graft mpi --personalize (reductions and messages, --personal_from) writes graft run's bytes"

# ---- 3a. --personal_from: averaged first, personal from round 4 --------------------
grep -q "round 4: from now on every worker keeps its own task modules, starting from its \
cohort's average of round 3" "$T/from.err" || fail "no log line at round 4"
python3 - "$T/from/events.jsonl" <<'PY' || fail "--personal_from 4: see above"
import json, sys
evs = [json.loads(l) for l in open(sys.argv[1])]
ins = {e["round"]: e["bytes_in"] for e in evs if e["event"] == "round_end"}
# Updates of rounds 2-3 carry the task scopes, those of rounds 5-6 do not
# (rounds 1 and 4 also count hellos and the switch).
assert max(ins[5], ins[6]) * 1.3 < min(ins[2], ins[3]), ins
test = [e for e in evs if e["event"] == "eval" and e["split"] == "test"][0]
acc = {w: m["accuracy"] for w, m in test["per_worker"].items()}
assert min(acc.values()) >= 0.95, acc
PY
# The workers' files say their task scopes are their own (a restart takes
# back only such files; one saved before round 4 holds the cohort's).
python3 - "$T/from/workers/client-000.safetensors" <<'PY' || fail "--personal_from: file metadata"
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    meta = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]
assert meta["federated.tasks"] == "own" and len(meta["federated.run_id"]) == 16, meta
PY
echo "ok 3a - --personal_from 4: task scopes averaged in rounds 1-3, personal from round 4"

# ---- 4. what does not go with it --------------------------------------------------
refused() {
    if timeout 20 "$GRAFT" run --config last.conf --shards sh --personalize "$@" --out "$T/bad" \
        >/dev/null 2>"$T/bad.err"; then fail "--personalize $* was accepted"; fi
}
refused --eval_on coordinator
grep -q -- "--personalize does not go with --eval_on coordinator or both" "$T/bad.err" ||
    fail "no reason for --eval_on coordinator"
refused --eval_on both
refused --logit_adjust 1
grep -q -- "--personalize does not go with --logit_adjust" "$T/bad.err" ||
    fail "no reason for --logit_adjust"
refused --method channels
grep -q -- "--personalize does not go with --method channels" "$T/bad.err" ||
    fail "no reason for --method channels"
refused --personal_from 7
grep -q -- "--personal_from after the last round" "$T/bad.err" ||
    fail "no reason for --personal_from 7 of 6 rounds"
if timeout 20 "$GRAFT" run --config last.conf --shards sh --personal_from 2 --out "$T/bad" \
    >/dev/null 2>"$T/bad.err"; then fail "--personal_from without --personalize was accepted"; fi
grep -q -- "--personal_from 2 goes with --personalize" "$T/bad.err" ||
    fail "no reason for --personal_from without --personalize"
[ ! -e "$T/bad/events.jsonl" ] || fail "a refused run wrote events"
echo "ok 4 - --personalize with --eval_on coordinator|both, --logit_adjust or channels is refused"

# ---- 5. a worker restarted with its --save file ------------------------------------
# Rounds wait for both workers (--min_replies 2), so the run waits for each
# restart; every round is evaluated, so every round rewrites the files.
EP=tcp://127.0.0.1:$(free_port)
RC="--config last.conf --personalize --rounds 60 --local_steps 20 --eval_every_rounds 1 \
--min_replies 2"
# wait_log FILE PATTERN: until FILE has a line matching PATTERN (30 s).
wait_log() {
    n=0
    until grep -q "$2" "$1" 2>/dev/null; do
        n=$((n + 1)); [ $n -gt 3000 ] && fail "no '$2' in $1"; sleep 0.01
    done
}
# first_loss FILE: the training loss of the first round FILE's worker logged.
first_loss() {
    grep -m1 'client-001: round [0-9]*: 20 steps, loss' "$1" | sed 's/.*loss \([0-9.]*\),.*/\1/'
}
timeout 120 "$GRAFT" coordinator --bind "$EP" --workers 2 $RC --out "$T/rs" >"$T/rs.out" \
    2>"$T/rs.err" &
COORD=$!
PIDS="$PIDS $COORD"
"$GRAFT" worker --connect "$EP" $RC --data sh/client-000 --save "$T/rs/w0.safetensors" \
    2>"$T/rs-w0.err" &
PIDS="$PIDS $!"
worker1() { # worker1 LOG: client-001 with its --save file
    "$GRAFT" worker --connect "$EP" $RC --data sh/client-001 --save "$T/rs/w1.safetensors" \
        2>"$1" &
    W1=$!
    PIDS="$PIDS $W1"
}
worker1 "$T/rs-a.err"
wait_log "$T/rs-a.err" "round 3: wrote the modules"
kill -9 "$W1"
worker1 "$T/rs-b.err"
# It may be asked to evaluate first (it joined during an evaluation): kill
# it once it trained a round (that round's loss is the check below).
wait_log "$T/rs-b.err" "client-001: round [0-9]*: 20 steps"
kill -9 "$W1"
grep -q "took its own task modules back from $T/rs/w1.safetensors" "$T/rs-b.err" ||
    { cat "$T/rs-b.err" >&2; fail "the restarted worker did not take its modules back"; }
rm "$T/rs/w1.safetensors"
worker1 "$T/rs-c.err"
wait "$COORD" || { tail -20 "$T/rs.err" >&2; fail "the coordinator failed around the restarts"; }
grep -q "took its own" "$T/rs-c.err" && fail "a worker without its file took modules back"
python3 - "$(first_loss "$T/rs-b.err")" "$(first_loss "$T/rs-c.err")" <<'PY' ||
import sys
back, fresh = map(float, sys.argv[1:])
assert back < 0.02 and fresh > 0.05, (back, fresh)
PY
    fail "first losses after the restarts: $(first_loss "$T/rs-b.err") with the file, $(first_loss "$T/rs-c.err") without"
grep -q '"event":"run_end".*"ok":true' "$T/rs/events.jsonl" || fail "run_end not ok"
# A worker SIGKILLed and restarted at once under its name takes its slot back
# at once (measured 3-150 ms from its hello to its assignment): its routing
# identity's old connection is closed, not one that ZeroMQ keeps deaf.
python3 - "$T/rs-b.err" "$T/rs-c.err" <<'PY' || fail "a restarted worker waited for its assignment"
import re, sys
def secs(line):
    h, m, s = line.split()[0].split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)
for path in sys.argv[1:]:
    lines = open(path).read().splitlines()
    hello = next(secs(l) for l in lines if "saying hello" in l)
    assigned = next(secs(l) for l in lines if re.search(r"registered as worker \d+", l))
    wait = (assigned - hello) % 86400  # past midnight too
    assert wait < 2.0, (path, wait)
PY
# Each restart's Assign made the coordinator send the task scopes again: no
# worker had to say that it lacked them.
grep -q 'reports error' "$T/rs.err" && fail "a restarted worker was sent no task scopes"
# Another run's file (another job: --rounds differs) is not taken.
cp "$T/last-true/workers/client-001.safetensors" "$T/other.safetensors"
EP=tcp://127.0.0.1:$(free_port)
timeout 60 "$GRAFT" coordinator --bind "$EP" --workers 1 --config last.conf --personalize \
    --rounds 2 --out "$T/ot" >/dev/null 2>"$T/ot.err" &
COORD=$!
PIDS="$PIDS $COORD"
timeout 60 "$GRAFT" worker --connect "$EP" --config last.conf --data sh/client-001 \
    --save "$T/other.safetensors" 2>"$T/ot-w.err" || fail "the worker with another run's file failed"
wait "$COORD" || fail "the coordinator of the other run failed"
grep -q "other.safetensors is not a --save file of this run .*moved to .*other-run" \
    "$T/ot-w.err" || { cat "$T/ot-w.err" >&2; fail "another run's file was not refused"; }
cmp "$T/last-true/workers/client-001.safetensors" "$T/other.safetensors.other-run" ||
    fail "another run's file was not kept aside"
echo "ok 5 - a worker restarted with its --save file takes its own modules back; without it, or with another run's, starts them over"

# ---- 5a. a restart at the switch to personal rounds ---------------------------------
# Round 4's 400 local steps take a while: the kill lands before its update.
boundary() { # boundary NAME RESTART
    EP=tcp://127.0.0.1:$(free_port)
    BC="--config last.conf --personalize --personal_from 4 --rounds 6 --local_steps 400 \
--eval_every_rounds 5 --min_replies 2 --round_timeout_ms 60000"
    timeout 120 "$GRAFT" coordinator --bind "$EP" --workers 2 $BC --out "$T/$1" \
        >/dev/null 2>"$T/$1.err" &
    COORD=$!
    PIDS="$PIDS $COORD"
    "$GRAFT" worker --connect "$EP" $BC --data sh/client-000 --save "$T/$1/w0.safetensors" \
        2>"$T/$1-w0.err" &
    PIDS="$PIDS $!"
    "$GRAFT" worker --connect "$EP" $BC --data sh/client-001 --save "$T/$1/w1.safetensors" \
        2>"$T/$1-w1.err" &
    W1=$!
    PIDS="$PIDS $W1"
    if [ "$2" = 1 ]; then
        n=0
        until grep -q 'round 3/6: 2 replies' "$T/$1.err" 2>/dev/null; do
            n=$((n + 1)); [ $n -gt 30000 ] && fail "$1: round 3 did not close"; sleep 0.002
        done
        kill -9 "$W1"
        "$GRAFT" worker --connect "$EP" $BC --data sh/client-001 \
            --save "$T/$1/w1.safetensors" 2>"$T/$1-w1b.err" &
        PIDS="$PIDS $!"
    fi
    wait "$COORD" || { tail -20 "$T/$1.err" >&2; fail "$1: the coordinator failed"; }
}
boundary straight 0
boundary restarted 1
grep -q "round 4: 400 steps" "$T/restarted-w1.err" &&
    fail "the killed worker finished round 4: the restart proves nothing"
cmp "$T/straight/modules.safetensors" "$T/restarted/modules.safetensors" ||
    fail "a worker restarted at the switch to personal rounds changed the coordinator's modules"
# The workers' files: the same tensors (their train.step counts this
# process's steps).
for f in w0 w1; do
    compare "$T/straight/$f.safetensors" "$T/restarted/$f.safetensors" >"$T/cmp-$f.txt" ||
        { cat "$T/cmp-$f.txt" >&2; fail "a worker restarted at the switch changed $f"; }
done
echo "ok 5a - a worker restarted at the switch to personal rounds ends as an uninterrupted run"


# ---- 6. an extended job: resumed with more --rounds ---------------------------------
# Other job options make another run id; the resumed coordinator names the
# run of its checkpoint as continued, and the workers take their --save
# files of it back.
timeout 60 "$GRAFT" run --config last.conf --shards sh --personalize --rounds 3 --out "$T/ext" \
    >/dev/null 2>"$T/ext1.err" || { tail -20 "$T/ext1.err" >&2; fail "ext: rounds 1-3 failed"; }
timeout 60 "$GRAFT" run --config last.conf --shards sh --personalize --rounds 6 \
    --resume "$T/ext/modules.safetensors" --out "$T/ext" >/dev/null 2>"$T/ext2.err" ||
    { tail -20 "$T/ext2.err" >&2; fail "ext: rounds 4-6 failed"; }
for c in client-000 client-001; do
    grep -q "worker $c: took its own task modules back .* in run [0-9a-f]\{16\}, which this run" \
        "$T/ext2.err" || { cat "$T/ext2.err" >&2; fail "ext: $c did not take its modules back"; }
done
[ ! -e "$T/ext/workers/client-001.safetensors.other-run" ] || fail "ext: a file was moved aside"
python3 - "$T/ext/events.jsonl" "$T/ext2.err" <<'PY' || fail "ext: the runs or round 4 are wrong"
import json, re, sys
starts = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "run_start"]
assert len(starts) == 2 and starts[0]["earlier_runs"] == [], starts
assert starts[1]["earlier_runs"] == [starts[0]["run_id"]] != [starts[1]["run_id"]], starts
# Round 4 starts from each worker's own modules of round 3, not initial ones.
losses = re.findall(r"round 4: 10 steps, loss ([0-9.]+)", open(sys.argv[2]).read())
assert len(losses) == 2 and max(map(float, losses)) < 0.02, losses
PY
echo "ok 6 - a job resumed with more rounds continues the workers' own modules"

# ---- 6a. workers that outlive their coordinator ---------------------------------------
# The coordinator is killed after round 3 and started again with other job
# options: resumed from its checkpoint, the run continues and the workers
# keep their own modules; started afresh, it is a new job and they start
# over (their first loss is back where round 1's was).
outlive() { # outlive NAME [COORDINATOR OPTIONS...]
    local name=$1
    shift
    EP=tcp://127.0.0.1:$(free_port)
    RC="--config last.conf --personalize --local_steps 20 --eval_every_rounds 1 --min_replies 2"
    "$GRAFT" coordinator --bind "$EP" --workers 2 $RC --rounds 40 --out "$T/$name" \
        >/dev/null 2>"$T/$name-c1.err" & # no timeout(1) between: the kill is the coordinator's
    COORD=$!
    PIDS="$PIDS $COORD"
    local w ws=""
    for w in 0 1; do
        timeout 60 "$GRAFT" worker --connect "$EP" $RC --data sh/client-00$w \
            --save "$T/$name/w$w.safetensors" 2>"$T/$name-w$w.err" &
        ws="$ws $!"
    done
    PIDS="$PIDS $ws"
    wait_log "$T/$name-c1.err" "round 3: checkpoint"
    kill -9 "$COORD"
    timeout 60 "$GRAFT" coordinator --bind "$EP" --workers 2 $RC "$@" \
        >/dev/null 2>"$T/$name-c2.err" || fail "$name: the second coordinator failed"
    wait $ws || fail "$name: a worker failed"
}
# loss_after_restart FILE: client-001's first training loss after the restart.
loss_after_restart() {
    sed -n '/registered again/,$p' "$1" | grep -m1 'round [0-9]*: 20 steps, loss' |
        sed 's/.*loss \([0-9.]*\),.*/\1/'
}
outlive kept --rounds 41 --resume "$T/kept/modules.safetensors" --out "$T/kept"
grep -q "continues run [0-9a-f]*: this worker keeps its own task modules" "$T/kept-w1.err" ||
    { cat "$T/kept-w1.err" >&2; fail "kept: the workers did not keep their modules"; }
outlive new --rounds 41 --out "$T/new2"
grep -q "is a new job, not a continuation of run .*start over" "$T/new-w1.err" ||
    { cat "$T/new-w1.err" >&2; fail "new: the workers kept modules of another job"; }
# The old job's --save file is kept aside, not overwritten by the new job's.
grep -q "w1.safetensors holds its modules of run [0-9a-f]*: .*moved to .*w1.safetensors.other-run" \
    "$T/new-w1.err" && [ -s "$T/new/w1.safetensors.other-run" ] ||
    { cat "$T/new-w1.err" >&2; fail "new: the old job's --save file was not kept aside"; }
python3 - "$(loss_after_restart "$T/kept-w1.err")" "$(loss_after_restart "$T/new-w1.err")" \
    <<'PY' || fail "first losses after the coordinator's restart are wrong"
import sys
kept, new = map(float, sys.argv[1:])
assert kept < 0.02 and new > 0.05, (kept, new)
PY
echo "ok 6a - workers outliving their coordinator keep their modules in a continued run, not in a new one"
