#!/bin/sh
# test_federated.sh — federated runs with real processes on loopback
# (DESIGN §5, issue 4):
#  1. CurveZMQ: a client whose key is not on the allow-list cannot join, nor
#     can one with another --server_key; the coordinator logs each (once,
#     then a count: they retry every 100 ms) with handshake_failed events,
#     and the run with the allowed clients completes; the refused client
#     gives up after --hello_timeout_ms and says why; command lines:
#     keygen's arguments (an existing key needs --force), strict numbers,
#     graft run's own options as config lines (workers = 1 below); another
#     admitted key under a registered worker's name is refused (its name
#     belongs to the key that registered it), and does not take over the
#     worker's connection: the worker is not lost and trains every round
#     that follows;
#  2. one worker holding all the data ends with the same modules (up to the
#     fixed-point aggregation's quantum, 2^-37) and the same test metrics as
#     `graft train` for the same steps; over several rounds too when the
#     run keeps the workers' AdamW state (--keep_optimizer_state);
#  3. a shard directory whose clients hold different tasks (and a client
#     whose shard lacks a class): `graft run --shards` completes, round_end
#     events list the per-task cohorts, every task is evaluated on its full
#     test split; with --logit_adjust the client lacking classes gets large
#     negative offsets for them (the run's label shares reach it);
#  4. a task no worker holds keeps its modules (empty cohort), and
#     `mpirun graft mpi --shards` gives the same modules as `graft run
#     --shards` with the same clients; too many workers for the clients, or
#     a client folder without a run task, is refused;
#  5. the shard directory `graft data shard` writes
#     runs, with the cohorts its plan gives;
#  6. a worker whose training steps each last several times the
#     coordinator's silence limit (5 heartbeats) is not declared lost: it
#     heartbeats from a second thread while it trains;
#  7. a worker whose method, LoRA ranks or targets, trunk, pooling or seq
#     differ from the coordinator's is refused at hello: both sides name the
#     setting, a worker_refused event, the worker exits non-zero.
#  8. liveness: a worker whose coordinator is SIGKILLed says hello again
#     after --coordinator_timeout_ms and exits 1; with --min_replies 2 and a
#     worker SIGKILLed the round emits one round_stalled event and the run
#     ends after --stall_timeout_ms; the other worker, told the run did not
#     complete, exits 1.
# usage: test_federated.sh GRAFT_BINARY SOURCE_DIR
set -eu
GRAFT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
SRC=$(cd "$2" && pwd)
NAME=federated
. "$SRC/tests/loopback.sh"
compare() { python3 "$SRC/tests/compare_modules.py" "$@"; }
# Three rounds of four local steps (later lines of a config file win).
printf 'rounds = 3\nlocal_steps = 4\n' >> "$T/run.conf"

# ---- 1. CurveZMQ: an unknown key is refused, the allowed clients finish ----
cd "$T"
for k in coordinator alice bob mallory; do "$GRAFT" keygen "$k" >/dev/null; done
cat alice.pub bob.pub > allowed.txt
EP=tcp://127.0.0.1:$(free_port)
"$GRAFT" coordinator --bind "$EP" --workers 2 --curve_secret coordinator --allow allowed.txt \
    --config run.conf --out "$T/curve" >"$T/curve.out" 2>"$T/curve.err" &
COORD=$!
PIDS="$COORD"
# The intruder connects first, so that it would take a slot if it could. It
# never hears back, and gives up after its --hello_timeout_ms with a hint.
"$GRAFT" worker --connect "$EP" --config run.conf --name mallory --shard 0/2 \
    --curve mallory --server_key coordinator.pub --hello_timeout_ms 3000 2>"$T/mallory.err" &
MALLORY=$!
PIDS="$PIDS $MALLORY"
# An allowed key with the wrong server key (bob's): its hello cannot be
# decrypted, and it retries every 100 ms until its own timeout.
"$GRAFT" worker --connect "$EP" --config run.conf --name eve --shard 1/2 \
    --curve alice --server_key bob.pub --hello_timeout_ms 3000 2>"$T/eve.err" &
EVE=$!
PIDS="$PIDS $EVE"
sleep 1
for w in alice bob; do
    i=$([ $w = alice ] && echo 0 || echo 1)
    "$GRAFT" worker --connect "$EP" --config run.conf --name $w --shard $i/2 \
        --curve $w --server_key coordinator.pub 2>"$T/$w.err" &
    PIDS="$PIDS $!"
done
n=0
while kill -0 "$COORD" 2>/dev/null; do
    n=$((n + 1)); [ $n -gt 900 ] && fail "CurveZMQ run did not finish in 90 s"; sleep 0.1
done
wait "$COORD" || { tail -20 "$T/curve.err" >&2; fail "CurveZMQ coordinator failed"; }
EV=$T/curve/events.jsonl
grep -q '"event":"run_end".*"ok":true' "$EV" || fail "CurveZMQ run_end not ok"
grep -qF "refused CurveZMQ client key $(grep -v '^#' mallory.pub)" "$T/curve.err" ||
    fail "the coordinator did not log the refused key"
[ "$(grep -c '"event":"worker_join"' "$EV")" -eq 2 ] || fail "expected exactly 2 worker_join events"
grep -q '"event":"worker_join".*"name":"mallory"' "$EV" && fail "the refused client joined"
grep '"event":"round_end"' "$EV" | grep -q mallory && fail "the refused client took part in a round"
[ "$(grep -c '"event":"round_end".*"participants":\["alice","bob"\]' "$EV")" -eq 3 ] ||
    fail "not every round had alice and bob"
if wait "$MALLORY"; then fail "the refused worker exited 0"; fi
grep -q "worker mallory: no answer from the coordinator in [0-9.]* s after saying hello \
(--hello_timeout_ms 3000): .*public key on its --allow list" "$T/mallory.err" ||
    { tail -5 "$T/mallory.err" >&2; fail "the refused worker did not say why it gave up"; }
if wait "$EVE"; then fail "the worker with the wrong server key exited 0"; fi
# Failed handshakes: one line saying what to do, then counts, not a line per
# retry; a handshake_failed event for each line; the file stays JSON lines.
python3 - "$EV" <<'PY' || fail "events.jsonl is not one JSON object per line"
import json, sys
for n, line in enumerate(open(sys.argv[1]), 1):
    assert isinstance(json.loads(line), dict), n
PY
lines() { grep -c "$1" "$T/curve.err" || true; }
hs_events() { grep '"event":"handshake_failed"' "$EV" || true; }
events() { hs_events | grep -c "$1" || true; }
CRYPTO="failed the CurveZMQ handshake (cryptographic error): does it use this coordinator's \
public key? (its graft worker --server_key must be the .pub of this coordinator's --curve_secret"
n=$(lines "$CRYPTO")
[ "$n" -ge 1 ] && [ "$n" -le 2 ] &&
    [ "$(lines "a client at 127\.0\.0\.1:[0-9]* $CRYPTO")" -ge 1 ] ||
    { grep handshake "$T/curve.err" >&2 || true; fail "$n lines for the wrong server key"; }
n=$(grep -o "[0-9]* more CurveZMQ handshake failures (cryptographic error) from 127.0.0.1" \
    "$T/curve.err" | awk '{s += $1} END {print s + 0}')
[ "$n" -ge 3 ] || fail "the wrong server key's retries were not counted ($n)"
[ "$(lines 'CurveZMQ handshake failures')" -le 2 ] || fail "the retries flooded the log"
[ "$(events '"reason":"cryptographic_error","failures":1,"summary":false,"peer":"127.0.0.1:')" \
    -ge 1 ] || fail "no handshake_failed event for the wrong server key"
[ "$(events cryptographic_error)" -le 4 ] || fail "too many cryptographic_error events"
MKEY=$(grep -v '^#' mallory.pub) # Z85 has regex characters: grep -F
[ "$(grep -cF "refused CurveZMQ client key $MKEY from 127.0.0.1: not in the --allow file" \
    "$T/curve.err")" -eq 1 ] || fail "the refused key was not logged once"
[ "$(hs_events | grep '"reason":"key_not_allowed","failures":1,"summary":false,"peer":"127.0.0.1"' |
    grep -cF "\"client_key\":\"$MKEY\"")" -eq 1 ] ||
    fail "no handshake_failed event naming the refused key"
hs_events | grep key_not_allowed | grep -qvF "$MKEY" &&
    fail "a key_not_allowed event without its key"
[ "$(events .)" -le 8 ] || fail "$(events .) handshake_failed events: a flood"
echo "ok 1 - CurveZMQ: a key off the allow-list and a wrong server key are logged once, then" \
    "counted; the allowed run completes; the refused workers time out their hello"

# ---- 1b. command lines: keygen, strict numbers, distributed options in a config
"$GRAFT" keygen --force carol >/dev/null || fail "keygen --force NAME failed"
[ -s carol.key ] && [ -s carol.pub ] && [ ! -e ./--force.key ] ||
    fail "keygen --force NAME: wrong files"
cp carol.pub carol.old
"$GRAFT" keygen carol --force=true >/dev/null || fail "keygen NAME --force=true failed"
cmp -s carol.pub carol.old && fail "keygen --force=true did not replace the key"
cp carol.pub carol.old
st=0; "$GRAFT" keygen carol >/dev/null 2>"$T/exists.err" || st=$?
[ $st -eq 1 ] && grep -qF "carol.key already exists: not replaced (graft keygen --force" \
    "$T/exists.err" && ! grep -q "failed" "$T/exists.err" && cmp -s carol.pub carol.old ||
    { cat "$T/exists.err" >&2; fail "keygen over a key: exit $st, want 1 naming --force alone"; }
expect_refusal() { # expect_refusal MESSAGE COMMAND...: exit 2 and MESSAGE on stderr
    msg=$1; shift
    st=0; "$@" >/dev/null 2>"$T/refused.err" || st=$?
    [ $st -eq 2 ] || fail "'$*' exited $st, not 2"
    grep -qF -- "$msg" "$T/refused.err" || { cat "$T/refused.err" >&2; fail "'$*': no '$msg'"; }
}
expect_refusal "expected one NAME, got 2 ('b' is one too many)" "$GRAFT" keygen a b
expect_refusal "unknown option 'bogus'" "$GRAFT" keygen c --bogus
expect_refusal "NAME '' must end in a file name" "$GRAFT" keygen ""
[ ! -e a.key ] && [ ! -e b.key ] && [ ! -e c.key ] && [ ! -e .key ] ||
    fail "a refused keygen wrote keys"
expect_refusal "'2x' for option 'workers' is not a whole number" \
    "$GRAFT" run --config run.conf --workers 2x
expect_refusal "--shard '1/2x': expected I/N" \
    "$GRAFT" worker --connect tcp://127.0.0.1:9 --config run.conf --shard 1/2x
expect_refusal "'abc' for option 'workers' is not a whole number" \
    "$GRAFT" coordinator --config run.conf --workers abc
grep -q curve_secret "$T/refused.err" && fail "a bad --workers blamed --curve_secret"
expect_refusal "--min_replies 3 is more than the 1 worker" \
    "$GRAFT" run --config run.conf --workers 1 --min_replies 3 --out "$T/mr"
[ ! -e "$T/mr" ] || fail "a refused run wrote $T/mr"
printf 'workers = 1\nrounds = 3\nlocal_steps = 4\n' > "$T/one-worker.conf"
echo "ok 1b - keygen arguments, strict numbers, precise messages"

# ---- 1c. a worker's name belongs to the key that registered it --------------------
# Bob's admitted key under alice's --name: the coordinator neither lets it
# into alice's slot nor re-registers alice for it. It refuses the hello,
# naming both keys, with a worker_refused event; the impostor says why and
# exits 1. Alice is not silenced meanwhile: her ZeroMQ routing identity
# carries her key, so the impostor's connection does not take hers over
# (a takeover left hers deaf for 10-20 s: she was lost, about 2 s into
# it with these 400 ms heartbeats, and missed the rounds). Bob joins under
# his own name right after, and the run's rounds all have both.
# This part keeps the old hyphenated spellings of the service files
# (--curve-secret, --server-key): they still work, with a warning.
EP=tcp://127.0.0.1:$(free_port)
"$GRAFT" coordinator --bind "$EP" --workers 2 --curve-secret coordinator --allow allowed.txt \
    --config run.conf --out "$T/imp" >/dev/null 2>"$T/imp.err" &
COORD=$!
PIDS="$PIDS $COORD"
"$GRAFT" worker --connect "$EP" --config run.conf --name alice --shard 0/2 --curve alice \
    --server-key coordinator.pub 2>"$T/imp-alice.err" &
PIDS="$PIDS $!"
n=0
until grep -q '"event":"worker_join".*"name":"alice"' "$T/imp/events.jsonl" 2>/dev/null; do
    n=$((n + 1)); [ $n -gt 300 ] && fail "alice did not join"; sleep 0.1
done
if timeout 30 "$GRAFT" worker --connect "$EP" --config run.conf --name alice --shard 1/2 \
    --curve bob --server_key coordinator.pub --hello_timeout_ms 10000 2>"$T/imp-bob.err"; then
    fail "bob's key registered as alice"
fi
AKEY=$(grep -v '^#' alice.pub) BKEY=$(grep -v '^#' bob.pub)
WHY="worker 'alice' registered with CurveZMQ key $AKEY, and this client's key is $BKEY"
grep -qF "worker alice: refused by the coordinator: $WHY" "$T/imp-bob.err" ||
    { tail -3 "$T/imp-bob.err" >&2; fail "the impostor did not say why it was refused"; }
grep -qF "coordinator: refused worker 'alice' from " "$T/imp.err" ||
    fail "the coordinator did not log the impostor"
grep '"event":"worker_refused"' "$T/imp/events.jsonl" | grep -qF "\"reason\":\"$WHY" ||
    fail "no worker_refused event naming both keys"
[ "$(grep -c '"event":"worker_join"' "$T/imp/events.jsonl")" -eq 1 ] ||
    fail "the impostor joined"
grep -q 're-registered' "$T/imp.err" && fail "the impostor re-registered alice"
grep -qF "option 'curve-secret' is deprecated: it is now spelled 'curve_secret'" "$T/imp.err" ||
    fail "--curve-secret was not taken as --curve_secret with a warning"
grep -qF "option 'server-key' is deprecated: it is now spelled 'server_key'" \
    "$T/imp-alice.err" || fail "--server-key was not taken as --server_key with a warning"
"$GRAFT" worker --connect "$EP" --config run.conf --name bob --shard 1/2 --curve bob \
    --server_key coordinator.pub 2>"$T/imp-bob2.err" &
PIDS="$PIDS $!"
n=0
while kill -0 "$COORD" 2>/dev/null; do
    n=$((n + 1)); [ $n -gt 600 ] && fail "the run after the impostor did not finish in 60 s"
    sleep 0.1
done
wait "$COORD" || { tail -20 "$T/imp.err" >&2; fail "the coordinator failed after the impostor"; }
EV=$T/imp/events.jsonl
grep '"event":"worker_lost"' "$EV" >&2 && fail "the impostor silenced alice: she was lost"
[ "$(grep -c '"event":"round_end".*"participants":\["alice","bob"\]' "$EV")" -eq 3 ] ||
    { grep '"event":"round_end"' "$EV" >&2; fail "alice missed rounds after the impostor"; }
echo "ok 1c - CurveZMQ: another admitted key under a registered worker's name is refused," \
    "and the worker keeps its connection"

# ---- 2. one worker with all the data = graft train ---------------------------
# Same seed, 12 steps either way: one round of 12 local steps. The worker's
# sampler is graft train's (stream 0 at step 0), the coordinator sends the
# schedule's rate for each step, and FedAvg of one reply is the reply up to
# the fixed-point aggregation: global + round((x - global) 2^36) / 2^36, off
# by at most 2^-37 (+ float rounding; only values below about 2^-13 move).
ATOL=1.4551915228366852e-11  # 2^-36
timeout 60 "$GRAFT" train --config run.conf --steps 12 --out "$T/central" >"$T/central.out" \
    2>"$T/central.err" || fail "graft train failed"
timeout 60 "$GRAFT" run --config run.conf --workers 1 --rounds 1 --local_steps 12 \
    --out "$T/one" >"$T/one.out" 2>"$T/one.err" || fail "graft run --workers 1 failed"
compare "$T/central/modules.safetensors" "$T/one/modules.safetensors" --atol $ATOL >"$T/cmp1.txt" ||
    { cat "$T/cmp1.txt" >&2; fail "one worker's modules differ from graft train's"; }
cmp "$T/central.out" "$T/one.out" || fail "one worker's test metrics differ from graft train's"
# The comparison can fail: another seed gives other modules.
timeout 60 "$GRAFT" train --config run.conf --steps 12 --seed 8 --out "$T/central8" \
    >/dev/null 2>&1 || fail "graft train --seed 8 failed"
compare "$T/central/modules.safetensors" "$T/central8/modules.safetensors" --atol $ATOL --expect-differ \
    >/dev/null || fail "compare_modules.py does not see a different seed"
# Over several rounds the worker restarts AdamW every round unless the run
# keeps its state: with --keep_optimizer_state one worker is graft train
# again (each round's import moves values by <= 2^-37, which later steps
# carry along: within 1e-6 here, measured 1e-7), without it clearly not.
timeout 60 "$GRAFT" run --config run.conf --config "$T/one-worker.conf" \
    --keep_optimizer_state true --out "$T/keep" >"$T/keep.out" 2>"$T/keep.err" ||
    fail "graft run --keep_optimizer_state failed"
compare "$T/central/modules.safetensors" "$T/keep/modules.safetensors" --atol 1e-6 >"$T/cmp3.txt" ||
    { cat "$T/cmp3.txt" >&2; fail "one worker keeping its AdamW state over 3 rounds differs from graft train"; }
cmp "$T/central.out" "$T/keep.out" || fail "one worker keeping its AdamW state: test metrics differ"
# With the heads' own rate (--head_lr; also sent with each round) the same holds.
timeout 60 "$GRAFT" train --config run.conf --steps 12 --head_lr 2e-2 --out "$T/central_h" \
    >"$T/central_h.out" 2>/dev/null || fail "graft train --head_lr failed"
timeout 60 "$GRAFT" run --config run.conf --workers 1 --rounds 3 --local_steps 4 --head_lr 2e-2 \
    --keep_optimizer_state true --out "$T/keep_h" >"$T/keep_h.out" 2>"$T/keep_h.err" ||
    fail "graft run --head_lr failed"
compare "$T/central_h/modules.safetensors" "$T/keep_h/modules.safetensors" --atol 1e-6 >"$T/cmp4.txt" ||
    { cat "$T/cmp4.txt" >&2; fail "with --head_lr, one worker keeping its AdamW state differs from graft train"; }
compare "$T/central/modules.safetensors" "$T/central_h/modules.safetensors" --atol 1e-6 --expect-differ \
    >/dev/null || fail "--head_lr changed nothing"
timeout 60 "$GRAFT" run --config run.conf --workers 1 --rounds 3 --local_steps 4 \
    --out "$T/reset" >/dev/null 2>&1 || fail "graft run over 3 rounds failed"
compare "$T/central/modules.safetensors" "$T/reset/modules.safetensors" --atol 1e-6 --expect-differ \
    >/dev/null || fail "restarting AdamW every round did not change the modules: the check above proves nothing"
echo "ok 2 - one worker holding all data: modules (within 2^-36) and test metrics identical to graft train; over 3 rounds too when it keeps its AdamW state"

# ---- 3. a shard directory: clients hold different tasks ----------------------
# client-000: majority (classes a and b only) + pairs; client-001: pairs;
# client-002: majority + pairs; client-003: shift (and a file of no run task).
python3 - "$T/data" "$T/shards" <<'PY'
import os, sys
data, out = sys.argv[1], sys.argv[2]
rows = {t: [l for l in open(os.path.join(data, t + ".tsv")) if l.startswith("train\t")]
        for t in ("majority", "pairs", "shift")}
hold = {0: ["majority", "pairs"], 1: ["pairs"], 2: ["majority", "pairs"], 3: ["shift"]}
for c, tasks in hold.items():
    d = os.path.join(out, "client-%03d" % c)
    os.makedirs(d)
    for t in tasks:
        r = rows[t][c::4]
        if t == "majority" and c == 0:
            r = [l for l in r if l.split("\t")[1] in ("a", "b")]
        open(os.path.join(d, t + ".tsv"), "w").writelines(r)
open(os.path.join(out, "client-003", "other.tsv"), "w").write("train\tx\t\ty\n")
with open(os.path.join(out, "shards.tsv"), "w") as f:
    for c, tasks in hold.items():
        for t in tasks:
            f.write("client-%03d\t%s\n" % (c, t))
PY
timeout 90 "$GRAFT" run --config run.conf --shards "$T/shards" --logit_adjust 1 --out "$T/sh4" \
    >"$T/sh4.out" 2>"$T/sh4.err" || { tail -20 "$T/sh4.err" >&2; fail "graft run --shards failed"; }
EV=$T/sh4/events.jsonl
grep -q '"event":"run_end".*"ok":true' "$EV" || fail "shard run_end not ok"
[ "$(grep -c '"event":"worker_join"' "$EV")" -eq 4 ] || fail "expected 4 clients to join"
COH='"cohorts":{"majority":\["client-000","client-002"\],"pairs":\["client-000","client-001","client-002"\],"shift":\["client-003"\]}'
[ "$(grep '"event":"round_end"' "$EV" | grep -c "$COH")" -eq 3 ] ||
    { grep '"event":"round_end"' "$EV" >&2; fail "round_end cohorts are not the clients' tasks"; }
grep -q '"event":"worker_join".*"name":"client-000".*"train_examples":{"majority":[0-9]*,"pairs":60}' "$EV" ||
    fail "worker_join does not list client-000's shard sizes"
grep -q 'other.tsv is not a task of --tasks' "$T/sh4.err" || fail "no warning about other.tsv"
# majority's labels are about a quarter each in the run; client-000 holds
# only a and b: about log(0.5 / 0.25) = +0.69 for those (measured +0.86,
# +0.49), log(0.5 / (n + 2) / p_run) < -2 for c and d (-2.70, -3.00).
# client-002 holds all four: offsets within 0.3 (measured 0.14 at most).
grep -Eq 'client-000: task majority: label-shift offsets \(tau 1\): a \+0\.[3-9][0-9], b \+0\.[3-9][0-9], c -[2-9]\.[0-9]{2}, d -[2-9]\.[0-9]{2}$' "$T/sh4.err" ||
    { grep 'label-shift' "$T/sh4.err" >&2; fail "client-000's offsets do not reflect its missing classes"; }
grep -Eq 'client-002: task majority: label-shift offsets \(tau 1\): a [-+]0\.[0-2][0-9], b [-+]0\.[0-2][0-9], c [-+]0\.[0-2][0-9], d [-+]0\.[0-2][0-9]$' "$T/sh4.err" ||
    { grep 'label-shift' "$T/sh4.err" >&2; fail "client-002's offsets are not small"; }
grep -q 'cohort of 3: client-000, client-001, client-002' "$T/sh4.err" ||
    fail "the human log does not show the cohorts"
for task in majority pairs shift; do
    grep -q "^$task .*test  n=32 " "$T/sh4.out" || fail "no full test-split metrics for $task"
done
echo "ok 3 - graft run --shards: clients with different tasks, cohorts in round_end, full test splits"

# ---- 4. an empty cohort; MPI with the same clients; too many workers ---------
timeout 90 "$GRAFT" run --config run.conf --shards "$T/shards" --workers 2 --out "$T/sh2" \
    >"$T/sh2.out" 2>"$T/sh2.err" || { tail -20 "$T/sh2.err" >&2; fail "graft run --shards --workers 2 failed"; }
EV=$T/sh2/events.jsonl
[ "$(grep -c '"event":"round_end".*"shift":\[\]' "$EV")" -eq 3 ] || fail "shift's cohort is not empty"
grep -q 'task shift: no worker holds it this round' "$T/sh2.err" || fail "no log line for the empty cohort"
# Untrained shift modules are the initial ones in both runs without client-003 ...
timeout 90 "$GRAFT" run --config run.conf --shards "$T/shards" --workers 3 --out "$T/sh3" \
    >/dev/null 2>"$T/sh3.err" || fail "graft run --shards --workers 3 failed"
compare "$T/sh2/modules.safetensors" "$T/sh3/modules.safetensors" --prefix task.shift. \
    >"$T/cmp4.txt" || { cat "$T/cmp4.txt" >&2; fail "an untrained task's modules changed"; }
# ... and differ from the run where client-003 trained them.
compare "$T/sh2/modules.safetensors" "$T/sh4/modules.safetensors" --prefix task.shift. \
    --expect-differ >/dev/null || fail "client-003 did not train the shift modules"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
    mpirun -np 3 --oversubscribe "$GRAFT" mpi --config run.conf --shards "$T/shards" \
    --out "$T/mpi" >"$T/mpi.out" 2>"$T/mpi.err" || { tail -20 "$T/mpi.err" >&2; fail "graft mpi --shards failed"; }
cmp "$T/sh2/modules.safetensors" "$T/mpi/modules.safetensors" ||
    fail "graft mpi --shards and graft run --shards (same clients) ended with other modules"
if "$GRAFT" run --config run.conf --shards "$T/shards" --workers 5 --out "$T/sh5" \
    >/dev/null 2>"$T/sh5.err"; then fail "--workers 5 with 4 client folders was accepted"; fi
grep -q 'only 4 client folders' "$T/sh5.err" || fail "no clear error for --workers 5"
# A client folder without any run task: its worker stops, and so does the run.
mkdir -p "$T/bad/client-000" "$T/bad/client-001"
cp "$T/shards/client-001/pairs.tsv" "$T/bad/client-000/"
cp "$T/shards/client-003/other.tsv" "$T/bad/client-001/"
if timeout 60 "$GRAFT" run --config run.conf --shards "$T/bad" --out "$T/bad/out" \
    >/dev/null 2>"$T/bad.err"; then fail "a run with a useless client folder succeeded"; fi
grep -q "client-001 holds none of the run's tasks" "$T/bad.err" || fail "no error naming the folder"
grep -q 'a worker process ended before the run did' "$T/bad.err" || fail "graft run did not stop"
# A --data folder that is not there is named as such, before any connection.
if timeout 20 "$GRAFT" worker --connect tcp://127.0.0.1:1 --config run.conf \
    --data "$T/no-such-client" 2>"$T/nodata.err"; then fail "--data of no folder was accepted"; fi
grep -q -- "--data $T/no-such-client: No such file or directory" "$T/nodata.err" ||
    { cat "$T/nodata.err" >&2; fail "no error naming the missing --data folder"; }
echo "ok 4 - empty cohort keeps its modules; MPI --shards = ZeroMQ --shards; bad shard setups refused"

# ---- 5. what graft data shard writes ------------------------------------------
# 4 clients, 2 tasks each: client c holds tasks (2c + j) mod 3.
TASKS="majority:classification:$T/data/majority.tsv,pairs:classification:$T/data/pairs.tsv,shift:generation:$T/data/shift.tsv"
"$GRAFT" data shard --tasks "$TASKS" --clients 4 --tasks_per_client 2 \
    --out "$T/dshard" >"$T/dshard.out" 2>&1 || { cat "$T/dshard.out" >&2; fail "graft data shard failed"; }
timeout 90 "$GRAFT" run --config run.conf --shards "$T/dshard" --out "$T/ds" >"$T/ds.out" \
    2>"$T/ds.err" || { tail -20 "$T/ds.err" >&2; fail "graft run on graft data shard's output failed"; }
EV=$T/ds/events.jsonl
COH='"cohorts":{"majority":\["client-000","client-001","client-003"\],"pairs":\["client-000","client-002","client-003"\],"shift":\["client-001","client-002"\]}'
[ "$(grep '"event":"round_end"' "$EV" | grep -c "$COH")" -eq 3 ] ||
    { grep '"event":"round_end"' "$EV" >&2; fail "cohorts differ from graft data shard's plan"; }
echo "ok 5 - graft run --shards on graft data shard's output: the plan's cohorts"

# ---- 6. steps longer than the silence limit: the worker still heartbeats -------
# The small preset at batch 96 takes 2-3 s a step on one thread (longer on a
# loaded machine); heartbeat_ms 200 declares a worker lost after 1 s of
# silence. Beating only between steps (as the worker once did), every round
# would lose both workers.
timeout 150 "$GRAFT" run --config run.conf --preset small --seq 128 --batch 96 --workers 2 \
    --rounds 2 --local_steps 1 --heartbeat_ms 200 --eval_every_rounds 2 --out "$T/slow" \
    >"$T/slow.out" 2>"$T/slow.err" || { tail -20 "$T/slow.err" >&2; fail "the slow-step run failed"; }
EV=$T/slow/events.jsonl
grep -q '"event":"worker_lost"' "$EV" && { grep '"event":"worker_lost"' "$EV" >&2; fail "a training worker was declared lost"; }
[ "$(grep -c '"event":"round_end".*"participants":\["shard-0-of-2","shard-1-of-2"\]' "$EV")" -eq 2 ] ||
    { grep '"event":"round_end"' "$EV" >&2; fail "not every round had both workers"; }
python3 - "$EV" <<'PY' || fail "steps were not longer than the silence limit: the test proves nothing"
import json, sys
ends = [json.loads(l) for l in open(sys.argv[1]) if '"round_end"' in l]
# one local step per round: its time, as the coordinator saw it, against 1 s
sys.exit(0 if min(e["train_ms_max"] for e in ends) > 1000 else 1)
PY
echo "ok 6 - a worker whose steps outlast 5 heartbeats is not lost (heartbeat thread)"

# ---- 7. a worker whose module settings differ is refused at hello --------------
# The coordinator names the worker and every differing setting, emits
# worker_refused and tells the worker, which says why and exits non-zero; a
# worker that differs only in per-machine settings (threads, name) joins.
EP=tcp://127.0.0.1:$(free_port)
"$GRAFT" coordinator --config run.conf --bind "$EP" --workers 1 --rounds 1 --local_steps 2 \
    --eval_every_rounds 1 --out "$T/refuse" >/dev/null 2>"$T/refuse.err" &
COORD=$!
PIDS="$PIDS $COORD"
refused() { # NAME EXPECTED-REASON FLAGS...: the worker is refused with that reason
    name=$1 reason=$2
    shift 2
    if timeout 30 "$GRAFT" worker --config run.conf --connect "$EP" --shard 0/1 --name "$name" \
        --hello_timeout_ms 10000 "$@" 2>"$T/$name.err"; then fail "worker $name ($*) joined"; fi
    grep -qF "worker $name: refused by the coordinator: $reason" "$T/$name.err" ||
        { tail -3 "$T/$name.err" >&2; fail "worker $name did not say why it was refused"; }
    grep -qF "coordinator: refused worker '$name' from " "$T/refuse.err" ||
        fail "the coordinator did not log refusing $name"
    grep '"event":"worker_refused"' "$T/refuse/events.jsonl" | grep "\"name\":\"$name\"" |
        grep -qF "\"reason\":\"$reason" || fail "no worker_refused event for $name"
}
refused adapter "--method differs (coordinator: lora, this worker: adapter)" --method adapter
refused rank "--lora_task_rank differs (coordinator: 4, this worker: 2)" --lora_task_rank 2
refused targets "--lora_targets differs (coordinator: all, this worker: qkv)" --lora_targets qkv
refused trunk "--trunk differs (coordinator: random init (preset tiny, seed 7), this worker: \
random init (preset small, seed 7))" --preset small
refused pool "--pool differs (coordinator: last, this worker: mean)" --pool mean
refused seq "--seq differs (coordinator: 32, this worker: 16)" --seq 16
timeout 60 "$GRAFT" worker --config run.conf --connect "$EP" --shard 0/1 --name good \
    --threads 2 2>"$T/good.err" || { tail -5 "$T/good.err" >&2; fail "a matching worker failed"; }
wait "$COORD" || { tail -5 "$T/refuse.err" >&2; fail "the coordinator failed after refusals"; }
grep -q '"event":"run_end".*"ok":true' "$T/refuse/events.jsonl" || fail "run_end not ok"
[ "$(grep -c '"event":"worker_join"' "$T/refuse/events.jsonl")" -eq 1 ] ||
    fail "a refused worker joined"
echo "ok 7 - workers with other module settings are refused at hello, naming the setting"

# ---- 8. liveness: a dead coordinator, a stalled round, an aborted run ---------
# wait_gone PID SECONDS: fails unless PID ends within SECONDS.
wait_gone() {
    n=0
    while kill -0 "$1" 2>/dev/null; do
        n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && return 1; sleep 0.1
    done
}
# wait_event PATTERN FILE SECONDS
wait_event() {
    n=0
    until grep -q "$1" "$2" 2>/dev/null; do
        n=$((n + 1)); [ $n -gt $(($3 * 10)) ] && fail "timed out waiting for $1 in $2"; sleep 0.1
    done
}
LIVE="--config run.conf --rounds 50 --local_steps 2 --heartbeat_ms 200 --eval_every_rounds 50"
LIVE="$LIVE --checkpoint_every_rounds 50"
# 8a. The coordinator SIGKILLed: its registered worker notices the silence
# (--coordinator_timeout_ms), says hello again, and exits 1 unanswered.
EP=tcp://127.0.0.1:$(free_port)
# shellcheck disable=SC2086
"$GRAFT" coordinator --bind "$EP" --workers 1 $LIVE --out "$T/live" >/dev/null 2>"$T/live.err" &
COORD=$!
PIDS="$PIDS $COORD"
# shellcheck disable=SC2086
"$GRAFT" worker --connect "$EP" $LIVE --coordinator_timeout_ms 1500 --hello_timeout_ms 1000 \
    2>"$T/live-w.err" &
W=$!
PIDS="$PIDS $W"
wait_event '"event":"round_end"' "$T/live/events.jsonl" 60
kill -9 "$COORD"
wait_gone "$W" 15 || fail "the worker of a SIGKILLed coordinator was still waiting after 15 s"
if wait "$W"; then fail "the worker of a SIGKILLed coordinator exited 0"; fi
grep -q "worker shard-0-of-1: coordinator silent for [0-9.]* s; saying hello again" \
    "$T/live-w.err" || { tail -5 "$T/live-w.err" >&2; fail "the worker did not log the silence"; }
grep -q "no answer from the coordinator in [0-9.]* s after saying hello (--hello_timeout_ms 1000)" \
    "$T/live-w.err" ||
    fail "the worker did not say why it gave up"
# 8b. --min_replies 2 and one of two workers SIGKILLed: the round stalls (one
# round_stalled event), the run ends after --stall_timeout_ms with exit 1,
# and the other worker, told the run did not complete, exits 1 too.
STALL="$LIVE --min_replies 2 --round_timeout_ms 1000"
EP=tcp://127.0.0.1:$(free_port)
# shellcheck disable=SC2086
"$GRAFT" coordinator --bind "$EP" --workers 2 $STALL --stall_timeout_ms 2000 --out "$T/stall" \
    >/dev/null 2>"$T/stall.err" &
COORD=$!
PIDS="$PIDS $COORD"
for i in 0 1; do
    # shellcheck disable=SC2086
    "$GRAFT" worker --connect "$EP" --shard $i/2 $STALL 2>"$T/stall-w$i.err" &
    eval "SW$i=\$!"
    PIDS="$PIDS $!"
done
EV=$T/stall/events.jsonl
wait_event '"event":"round_end"' "$EV" 60
kill -9 "$SW1"
wait_gone "$COORD" 30 || fail "the coordinator still waited for a second reply after 30 s"
if wait "$COORD"; then fail "a run that stalled exited 0"; fi
grep -q '"event":"round_stalled","round":[0-9]*,"replies":1,"min_replies":2' "$EV" ||
    { tail -3 "$EV" >&2; fail "no round_stalled event with the reply counts"; }
[ -z "$(grep '"event":"round_stalled"' "$EV" | sed 's/.*"round":\([0-9]*\),.*/\1/' | uniq -d)" ] ||
    fail "a round emitted round_stalled more than once"
grep -q '"event":"run_end".*"ok":false' "$EV" || fail "run_end of the stalled run is not ok:false"
grep -q 'still 1 of 2 replies needed .* after the deadline (--stall_timeout_ms)' "$T/stall.err" ||
    fail "the coordinator did not say why the run ended"
wait_gone "$SW0" 15 || fail "the surviving worker did not stop"
if wait "$SW0"; then fail "the worker of an aborted run exited 0"; fi
grep -q 'shutdown: coordinator stopped' "$T/stall-w0.err" &&
    grep -q 'the run did not complete; exiting with an error' "$T/stall-w0.err" ||
    { tail -5 "$T/stall-w0.err" >&2; fail "the worker did not log the aborted run"; }
echo "ok 8 - liveness: a worker leaves a silent coordinator; a stalled round is an event and" \
    "ends the run after --stall_timeout_ms; the workers of an aborted run exit 1"
