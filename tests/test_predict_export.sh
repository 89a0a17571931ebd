#!/bin/sh
# graft predict and graft export against graft eval on the same trained
# modules (LoRA on the shipped small trunk, two synthetic tasks):
#  - predict: the labels it prints for the classification task's test texts
#    score the accuracy that graft eval reports, and its continuations of
#    the generation task's test prompts score eval's chrF (recomputed here in
#    Python, sacreBLEU's definition as in common/metrics.h); --text, the line
#    count, the sample that eval logs, and the refusals: no --resume, an
#    unknown --task, several tasks without --task;
#  - export: the generation task's exported trunk, evaluated as a plain
#    trunk (--method head), gives eval's line for the modules to the digit;
#    the classification task's file carries its head and labels; an adapter
#    run is refused (exit 1, no file), as is a missing --file (exit 2);
#  - refusals, each naming the option and leaving nothing behind: eval,
#    predict, export and train --resume with settings other than the ones
#    the modules record, --steps the checkpoint already holds, --channels_k
#    above the trunk's width, --seq above its context, a channels run with
#    no stage 2, an unknown --mix, a task name twice;
#  - a task without dev and test rows: "empty split: no metrics" and JSON
#    nulls, no zeros.
# Usage: test_predict_export.sh GRAFT_BINARY SOURCE_DIR
set -eu
GRAFT="$1"
SRC="$2"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
fail() { echo "test_predict_export: FAIL: $*" >&2; exit 1; }

python3 "$SRC/scripts/synthetic_tasks.py" "$T/data" --train 600 --eval 100 >/dev/null
TASKS="majority:classification:$T/data/majority.tsv,shift:generation:$T/data/shift.tsv"
set -- --trunk "$SRC/models/small/trunk.safetensors" --tasks "$TASKS" --seq 32 --method lora \
  --batch 16 --gen_tokens 16 --threads 1
"$GRAFT" train "$@" --steps 300 --eval_every 300 --lr 3e-3 --out "$T/run" >"$T/train.log" 2>&1 ||
  fail "graft train: $(tail -5 "$T/train.log")"
M="$T/run/modules.safetensors"
"$GRAFT" eval "$@" --resume "$M" --eval_max 0 --decode_max 0 >"$T/eval.out" 2>"$T/eval.err" ||
  fail "graft eval: $(tail -5 "$T/eval.err")"
cat "$T/eval.out"

for task in majority shift; do
  awk -F '\t' -v out="$T/$task" '$1 == "test" { print $4 > (out ".in"); print $2 > (out ".ref") }' \
    "$T/data/$task.tsv"
  "$GRAFT" predict "$@" --resume "$M" --task "$task" <"$T/$task.in" >"$T/$task.out" \
    2>"$T/$task.err" || fail "graft predict --task $task: $(tail -5 "$T/$task.err")"
  [ "$(wc -l <"$T/$task.out")" -eq "$(wc -l <"$T/$task.in")" ] ||
    fail "$task: $(wc -l <"$T/$task.out") output lines for $(wc -l <"$T/$task.in") inputs"
done

python3 - "$T" <<'PY' || fail "predict's outputs do not score what graft eval reports"
import re, sys
from collections import Counter

d = sys.argv[1]
lines = lambda name: open(f"{d}/{name}", encoding="utf-8").read().split("\n")[:-1]
evals = open(f"{d}/eval.out").read()

# majority: LABEL<TAB>PROBABILITY per input; accuracy as graft eval's
pred = [l.split("\t") for l in lines("majority.out")]
assert all(len(p) == 2 and 0.0 < float(p[1]) <= 1.0 for p in pred), pred[:3]
acc = sum(p[0] == r for p, r in zip(pred, lines("majority.ref"))) / len(pred)
want = float(re.search(r"majority\s+test\s+n=100\s+acc (\S+)", evals).group(1))
print(f"majority: predict accuracy {acc:.4f}, graft eval {want:.4f}")
assert abs(acc - want) < 1e-9 and acc > 0.5

# shift: corpus chrF of the continuations (n = 1..6, beta 2, whitespace
# removed, effective order) as graft eval's
def ngrams(s, n):
    s = [c for c in s if not c.isspace()]
    return Counter(tuple(s[i:i + n]) for i in range(len(s) - n + 1))
hyp = [0] * 6; ref = [0] * 6; match = [0] * 6
esc = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
unescape = lambda o: re.sub(r"\\(.)", lambda m: esc[m.group(1)], o)
outs = [unescape(o) for o in lines("shift.out")]
for h, r in zip(outs, lines("shift.ref")):
    for k in range(6):
        gh, gr = ngrams(h, k + 1), ngrams(r, k + 1)
        hyp[k] += sum(gh.values()); ref[k] += sum(gr.values())
        match[k] += sum(min(c, gr[g]) for g, c in gh.items())
ks = [k for k in range(6) if hyp[k] and ref[k]]
p = sum(match[k] / hyp[k] for k in ks) / len(ks)
r = sum(match[k] / ref[k] for k in ks) / len(ks)
chrf = 100 * 5 * p * r / (4 * p + r) if p + r else 0.0
want = float(re.search(r"shift\s+test\s+n=100\s+chrF (\S+) \(n=100\)", evals).group(1))
print(f"shift: predict chrF {chrf:.2f}, graft eval {want:.2f}")
assert abs(chrf - want) < 0.006 and chrf > 20
PY

# graft eval logs its first test prompt's decode as a sample: the same text
sample=$(sed -n 's/.* shift test sample: \(.*\)  (reference: .*/\1/p' "$T/eval.err")
[ "$sample" = "$(head -1 "$T/shift.in") -> $(head -1 "$T/shift.out")" ] ||
  fail "eval's sample '$sample' is not predict's '$(head -1 "$T/shift.out")'"

# one input from --text: the same line as from standard input
first=$(head -1 "$T/shift.in")
"$GRAFT" predict "$@" --resume "$M" --task shift --text "$first" >"$T/one.out" 2>/dev/null ||
  fail "--text"
[ "$(cat "$T/one.out")" = "$(head -1 "$T/shift.out")" ] ||
  fail "--text '$first' gave '$(cat "$T/one.out")', stdin gave '$(head -1 "$T/shift.out")'"

# refusals, each with a message that names the problem, and nothing written
rejects() { # EXPECTED_TEXT COMMAND ARGS...: exit 1 or 2, the text on stderr, no $T/out
  want="$1"
  shift
  set +e
  "$GRAFT" "$@" >/dev/null 2>"$T/err"
  rc=$?
  set -e
  [ $rc -eq 1 ] || [ $rc -eq 2 ] || fail "exit $rc (want 1 or 2): $*"
  grep -q -F -- "$want" "$T/err" || fail "no '$want' in: $(cat "$T/err")"
  [ ! -e "$T/out" ] || fail "left $T/out behind: $*"
}
refused() { # EXPECTED_TEXT ARGS...: of graft predict
  want="$1"
  shift
  rejects "$want" predict "$@" --text abc
}
refused "needs --resume" "$@" --task shift
refused "--task nope: not among" "$@" --resume "$M" --task nope
refused "name one with --task" "$@" --resume "$M"

# export: the folded trunk is the model
"$GRAFT" export "$@" --resume "$M" --task shift --file "$T/shift.safetensors" 2>"$T/err" ||
  fail "export shift: $(cat "$T/err")"
"$GRAFT" eval --trunk "$T/shift.safetensors" --tasks "shift:generation:$T/data/shift.tsv" --seq 32 \
  --batch 16 --gen_tokens 16 --threads 1 --method head --eval_max 0 --decode_max 0 \
  >"$T/plain.out" 2>"$T/err" ||
  fail "eval of the exported trunk: $(cat "$T/err")"
want=$(grep '^shift ' "$T/eval.out")
got=$(grep '^shift ' "$T/plain.out")
echo "exported trunk: $got"
[ "$got" = "$want" ] || fail "exported trunk gives '$got', the modules '$want'"
# a --file in folders that do not exist yet: they are made, as train and pretrain do
"$GRAFT" export "$@" --resume "$M" --task majority --file "$T/new/dir/maj.safetensors" 2>"$T/err" ||
  fail "export majority: $(cat "$T/err")"
mv "$T/new/dir/maj.safetensors" "$T/maj.safetensors"
python3 - "$T/maj.safetensors" <<'PY' || fail "the classification export lacks its head or labels"
import json, struct, sys
f = open(sys.argv[1], "rb")
h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
meta = h["__metadata__"]
assert h["head.weight"]["shape"] == [192, 4], h.get("head.weight")
assert h["head.bias"]["shape"] == [4], h.get("head.bias")
assert json.loads(meta["graft.labels"]) == ["a", "b", "c", "d"], meta
assert meta["graft.task"] == "majority" and meta["graft.kind"] == "classification", meta
PY
# graft eval does not load an exported head: it says so.
"$GRAFT" eval --trunk "$T/maj.safetensors" --tasks "majority:classification:$T/data/majority.tsv" \
  --seq 32 --threads 1 --method head --eval_max 8 >/dev/null 2>"$T/err" ||
  fail "eval of the classification export: $(cat "$T/err")"
grep -q "maj.safetensors is graft export's model of task majority with its head, which graft eval" \
  "$T/err" || fail "no warning that the exported head is not evaluated: $(cat "$T/err")"
set +e
"$GRAFT" export "$@" --resume "$M" --task shift >/dev/null 2>"$T/err"
[ $? -eq 2 ] && grep -q "needs --file" "$T/err" || fail "export without --file: $(cat "$T/err")"
"$GRAFT" train "$@" --method adapter --steps 2 --eval_every 2 --eval_max 8 --out "$T/ad" \
  >/dev/null 2>&1 || fail "adapter training"
"$GRAFT" export "$@" --method adapter --resume "$T/ad/modules.safetensors" --task shift \
  --file "$T/ad.safetensors" >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q "does not fold" "$T/err" && [ ! -e "$T/ad.safetensors" ] ||
  fail "adapter export not refused: $(cat "$T/err")"
set -e

# Settings that differ from the ones the modules were trained with
# (recorded in the checkpoint), on eval, predict, export and resume.
rejects "$M: the modules were trained with --lora_shared_rank 8, this run gives \
--lora_shared_rank 0" eval "$@" --resume "$M" --lora_shared_rank 0
refused "the modules were trained with --pool last, this run gives --pool mean" "$@" \
  --resume "$M" --task majority --pool mean
rejects "the modules were trained with --lora_targets all, this run gives --lora_targets qkv" \
  export "$@" --resume "$M" --task shift --lora_targets qkv --file "$T/out/x.safetensors"
rejects "the modules were trained with --optimizer adamw, this run gives --optimizer sgd" \
  train "$@" --resume "$M" --steps 400 --optimizer sgd --out "$T/out"
rejects "$M: the checkpoint already holds 300 steps (--steps 300)" \
  train "$@" --resume "$M" --steps 300 --out "$T/out"

# Run settings refused before any output: against the trunk (C=192, T=128),
# unknown values, a task name twice, a channels run without a stage 2.
rejects "--channels_k 200 exceeds the width of trunk $SRC/models/small/trunk.safetensors: a \
layer has C=192 MLP-output channels" train "$@" --method lntune,channels --channels_k 200 \
  --steps 6 --out "$T/out"
rejects "--channels_k 1000 exceeds the width" inspect "$@" --method lntune,channels \
  --channels_k 1000
rejects "--seq 1000 exceeds the context of trunk $SRC/models/small/trunk.safetensors (T=128 \
tokens)" train "$@" --seq 1000 --steps 6 --out "$T/out"
rejects "--stage1_steps 100 leaves no stage 2 in --steps 6" train "$@" --method lntune,channels \
  --stage1_steps 100 --steps 6 --out "$T/out"
rejects "unknown --mix 'foo' (roundrobin or proportional)" train "$@" --mix foo --steps 6 \
  --out "$T/out"
rejects "unknown --mix 'bogus' (roundrobin or proportional)" run "$@" --mix bogus --rounds 1 \
  --out "$T/out"
! grep -q "starting [0-9]* workers" "$T/err" ||
  fail "graft run started its workers before refusing --mix"
rejects "tasks: task name 'shift' is given twice" train "$@" \
  --tasks "$TASKS,shift:generation:$T/data/shift.tsv" --steps 6 --out "$T/out"

# A task without dev and test rows: its evaluations say so, with no numbers.
grep '^train' "$T/data/majority.tsv" >"$T/data/trainonly.tsv"
"$GRAFT" train "$@" --tasks "only:classification:$T/data/trainonly.tsv" --steps 4 --eval_every 2 \
  --out "$T/empty" >"$T/empty.out" 2>"$T/empty.err" || fail "train on $T/data/trainonly.tsv"
grep -q -F "only has no test rows: its test evaluations report no metrics" "$T/empty.err" ||
  fail "no warning of the empty split: $(cat "$T/empty.err")"
[ "$(cat "$T/empty.out")" = "only                 test  n=0     empty split: no metrics" ] ||
  fail "empty test split reported as '$(cat "$T/empty.out")'"
python3 - "$T/empty/events.jsonl" <<'PY' || fail "the empty splits' eval events hold numbers"
import json, sys
evals = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "eval"]
assert [e["split"] for e in evals] == ["dev", "test"], evals
for e in evals:
    assert e["examples"] == 0, e
    assert all(e[k] is None for k in ("loss", "accuracy", "macro_f1", "ece")), e
PY
# The effective settings: graft train writes OUT/config.txt and logs its
# path; a run of --config that file writes the same one (but for the flags
# given on top of it).
C="$T/run/config.txt"
grep -q -F "config: the effective settings are in $C" "$T/train.log" || fail "no $C logged"
"$GRAFT" train --config "$C" --out "$T/again" --steps 1 --eval_max 4 --decode_max 1 \
  >/dev/null 2>"$T/err" || fail "graft train --config $C: $(tail -3 "$T/err")"
for f in "$C" "$T/again/config.txt"; do
  grep -v -e '^out =' -e '^steps =' -e '^eval_max =' -e '^decode_max =' "$f" >"$f.rest"
done
cmp "$C.rest" "$T/again/config.txt.rest" || fail "$C does not read back to the same settings"
grep -q -x "tasks = $TASKS" "$C" || fail "$C lacks the run's tasks"
# A resumed run's file repeats the run from its start: no --resume in it.
"$GRAFT" train --config "$C" --out "$T/again" --steps 2 --eval_max 4 --decode_max 1 \
  --resume "$T/again/modules.safetensors" >/dev/null 2>"$T/err" ||
  fail "graft train --resume: $(tail -3 "$T/err")"
grep -q -x 'resume =' "$T/again/config.txt" || fail "a resumed run's config.txt holds its --resume"

# --log_level, else GRAFT_LOG_LEVEL: warn and error leave out the info lines.
levels() { # ENV_LEVEL ARGS...: the levels of graft inspect's log lines
  lvl="$1"
  shift
  env GRAFT_LOG_LEVEL="$lvl" "$GRAFT" inspect "$@" 2>&1 >/dev/null | awk '{ print $2 }' |
    sort -u | tr '\n' ' '
}
[ "$(levels '' "$@")" = "info " ] || fail "inspect logs '$(levels '' "$@")', not info lines"
[ -z "$(levels '' "$@" --log_level warn)" ] || fail "--log_level warn still logs"
[ -z "$(levels error "$@")" ] || fail "GRAFT_LOG_LEVEL=error still logs"
[ "$(levels error "$@" --log_level info)" = "info " ] ||
  fail "--log_level info does not override GRAFT_LOG_LEVEL=error"
rejects "--log_level 'loud': expected error, warn, info or debug" inspect "$@" --log_level loud
env GRAFT_LOG_LEVEL=loud "$GRAFT" inspect "$@" >/dev/null 2>"$T/err" &&
  fail "GRAFT_LOG_LEVEL=loud accepted"
grep -q -F "GRAFT_LOG_LEVEL 'loud': expected error, warn, info or debug" "$T/err" ||
  fail "GRAFT_LOG_LEVEL=loud: $(cat "$T/err")"
echo "test_predict_export: ok"
