#!/bin/sh
# graft report on fabricated event logs with known numbers: the summary
# table's values and the sample line under it, an --eval_on both run (the
# coordinator's events count; the workers' spread line), summary.json, the plots (when
# gnuplot is installed), the refusal of a malformed log or a field of the
# wrong type with its file and line, a log holding two runs, and --out=DIR.
# Usage: test_report.sh GRAFT_BINARY
set -eu
GRAFT="$1"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
fail() { echo "test_report: FAIL: $*" >&2; exit 1; }

mkdir -p "$T/central" "$T/fed" "$T/masks"
cat > "$T/central/events.jsonl" <<'J'
{"ts":1.0,"event":"run_start","mode":"train","method":"lora","step":0,"params":{"trunk":1000,"shared":40,"tasks":{"a":10,"b":30},"per_task":{"a":50,"b":70}}}
{"ts":2.0,"event":"train","step":10,"task":"a","loss":2.0}
{"ts":3.0,"event":"eval","task":"a","split":"dev","accuracy":0.5,"ece":0.2,"loss":1.0,"step":10}
{"ts":4.0,"event":"eval","task":"a","split":"test","accuracy":0.75,"ece":0.1,"macro_f1":0.7,"loss":0.9,"step":20}
{"ts":5.0,"event":"eval","task":"b","split":"test","chrf":40.0,"loss":2.5,"perplexity":12.2,"step":20,"sample":{"prompt":"oak","output":"a tree","reference":"a tall tree"}}
{"ts":6.0,"event":"run_end","step":20,"seconds":12.5,"ok":true}
J
cat > "$T/fed/events.jsonl" <<'J'
{"ts":1.0,"event":"run_start","mode":"run","method":"lora","round":1,"params":{"trunk":1000,"shared":40,"tasks":{"a":10},"per_task":{"a":50}},"personalize":true}
{"ts":2.0,"event":"round_end","round":1,"train_loss":2.0,"bytes_in":100,"bytes_out":300}
{"ts":3.0,"event":"round_end","round":2,"train_loss":1.5,"bytes_in":200,"bytes_out":400}
{"ts":4.0,"event":"eval","task":"a","split":"test","accuracy":0.6,"ece":0.3,"loss":1.1,"round":2}
{"ts":5.0,"event":"run_end","round":2,"seconds":30.0,"ok":true}
J
# --eval_on both: the coordinator's eval events count; the workers' twin
# lends its per-worker metrics (the spread line under the table).
mkdir -p "$T/both"
cat > "$T/both/events.jsonl" <<'J'
{"ts":1.0,"event":"run_start","mode":"run","method":"lora","round":1}
{"ts":2.0,"event":"round_end","round":1,"train_loss":2.0,"bytes_in":100,"bytes_out":300}
{"ts":3.0,"event":"eval","task":"a","split":"test","accuracy":0.7,"ece":0.2,"loss":1.0,"round":1,"source":"coordinator"}
{"ts":3.1,"event":"eval","task":"a","split":"test","accuracy":0.7,"ece":0.2,"loss":1.0,"round":1,"source":"workers","workers":["w1","w2","w3"],"per_worker":{"w1":{"examples":10,"accuracy":0.9},"w2":{"examples":10,"accuracy":0.5},"w3":{"examples":10,"accuracy":0.7}}}
{"ts":4.0,"event":"run_end","round":1,"seconds":3.0,"ok":true}
J
cat > "$T/masks/events.jsonl" <<'J'
{"ts":1.0,"event":"run_start","mode":"graft","method":"graft","step":0}
{"ts":1.5,"event":"mask","trunk":1000,"eligible":800}
{"ts":2.0,"event":"eval","task":"a","split":"test","accuracy":0.55,"ece":0.05,"loss":1.0,"sparsity":0.01}
{"ts":2.0,"event":"eval","task":"a","split":"test","accuracy":0.65,"ece":0.04,"loss":0.9,"sparsity":0.1}
{"ts":3.0,"event":"mask_overlap","tasks":["a","b"],"jaccard":[[1.0,0.25],[0.25,1.0]]}
{"ts":4.0,"event":"run_end","seconds":3.0,"ok":true}
J

"$GRAFT" report --no_plots --out "$T/rep" "$T/central" "$T/fed/events.jsonl" "$T/masks" > "$T/table.txt" \
  || fail "graft report exited $?"
cat "$T/table.txt"
grep -q '^central .* 75.00 .* 40.00 .* 57.50 .* 0.100 .* 60 .* 6.000% .* 12.5$' "$T/table.txt" \
  || fail "central row"
grep -q '^fed .* 60.00 .* 500 .* 30.0$' "$T/table.txt" || fail "federated row (bytes per round 500)"
grep -q '^fed  *run  *lora+personal  ' "$T/table.txt" || fail "the personalised run's method"
grep -q '^central  *train  *lora  ' "$T/table.txt" || fail "central's method"
grep -qx 'sample central b: oak -> a tree  (reference: a tall tree)' "$T/table.txt" ||
  fail "no sample line for the generation task"
grep -q '^masks@1% .* 55.00 .* 8 ' "$T/table.txt" || fail "mask row at 1% (8 of 800 eligible)"
grep -q '^masks@10% .* 65.00 ' "$T/table.txt" || fail "mask row at 10%"
"$GRAFT" report --no_plots --out "$T/repb" "$T/both" > "$T/both.txt" || fail "report of the both run"
grep -q '^both .* 70.00 ' "$T/both.txt" || fail "both: the row is not the coordinator's 70.00"
grep -qx 'workers both a: 3 workers, min 50.00 (w2), mean 70.00, max 90.00 (w1)' "$T/both.txt" ||
  { cat "$T/both.txt" >&2; fail "no per-worker spread line"; }
python3 - "$T/repb/summary.json" <<'P' || fail "per_worker in summary.json"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["runs"][0]["tasks"]["a"]["per_worker"] == {"w1": 90.0, "w2": 50.0, "w3": 70.0}, s
P
python3 - "$T/rep/summary.json" <<'P' || fail "summary.json"
import json, sys
s = json.load(open(sys.argv[1]))
r = {x["run"] + ("@%g" % x["sparsity"] if "sparsity" in x else ""): x for x in s["runs"]}
assert abs(r["central"]["avg"] - 57.5) < 1e-9, r["central"]
assert r["central"]["tasks"]["b"]["metric_name"] == "chrf"
assert abs(r["central"]["ece"] - 0.1) < 1e-9
assert abs(r["central"]["params_per_task"] - 60) < 1e-9
assert abs(r["fed"]["bytes_per_round"] - 500) < 1e-9 and r["fed"]["rounds"] == 2
assert abs(r["masks@0.01"]["params_per_task"] - 8) < 1e-9
assert s["mask_overlap"]["jaccard"][0][1] == 0.25
P

# Plots, when gnuplot is here (scripts/install-deps.sh installs it).
if command -v gnuplot >/dev/null 2>&1; then
  "$GRAFT" report --out "$T/rep" "$T/central" "$T/fed" "$T/masks" > /dev/null || fail "plots"
  for f in central-curves fed-curves masks-curves sparsity overlap; do
    [ -s "$T/rep/$f.png" ] || fail "no $f.png"
    [ "$(head -c 4 "$T/rep/$f.png" | od -An -c | tr -d ' ')" = "211PNG" ] || fail "$f.png is not a PNG"
  done
  # each task's final test metric is drawn as a dot beside its dev line
  grep -q '^\$test0 << EOD' "$T/rep/central-curves.gp" && grep -q 'with points lt 1 pt 7' "$T/rep/central-curves.gp" ||
    fail "the curves plot has no test point"
fi

# A malformed line names the file and the line; nothing is written.
printf '{"event":"run_start"}\nnot json\n{"event":"run_end"}\n' > "$T/bad.jsonl"
if "$GRAFT" report --no_plots --out "$T/rep2" "$T/bad.jsonl" 2> "$T/err.txt"; then
  fail "a malformed log was accepted"
fi
grep -q 'bad.jsonl:2' "$T/err.txt" || { cat "$T/err.txt"; fail "error does not name file:line"; }
[ ! -e "$T/rep2/summary.json" ] || fail "summary written for a malformed log"
# A field of the wrong type names the file, line, event and field.
printf '{"event":"run_start"}\n{"event":"eval","task":1,"split":"test","accuracy":0.5}\n' \
  > "$T/types.jsonl"
if "$GRAFT" report --no_plots --out "$T/rep3" "$T/types.jsonl" 2> "$T/err.txt"; then
  fail "an eval event with a numeric task was accepted"
fi
grep -q 'types.jsonl:2: eval event: field "task" must be a string' "$T/err.txt" ||
  { cat "$T/err.txt"; fail "wrong field type not named"; }
printf '{"event":"eval","task":"a","split":"test","accuracy":"high"}\n' > "$T/types.jsonl"
"$GRAFT" report --no_plots --out "$T/rep3" "$T/types.jsonl" 2> "$T/err.txt" &&
  fail "a string accuracy was accepted"
grep -q 'types.jsonl:1: eval event: field "accuracy" must be a number' "$T/err.txt" ||
  { cat "$T/err.txt"; fail "wrong accuracy type not named"; }
[ ! -e "$T/rep3/summary.json" ] || fail "summary written for a log with a wrong field type"

# A log of two runs one after the other (an --out reused before graft
# refused it): the last run started from scratch counts, with its resumption.
mkdir -p "$T/twice"
{ cat "$T/fed/events.jsonl" "$T/central/events.jsonl"
  sed -e 's/"step":0/"step":20/' -e 's/"accuracy":0.75/"accuracy":0.25/' "$T/central/events.jsonl"
} > "$T/twice/events.jsonl"
"$GRAFT" report --no_plots --out "$T/rep5" "$T/twice" > "$T/twice.txt" 2> "$T/err.txt" ||
  fail "a log of two runs was refused"
grep -q 'twice/events.jsonl holds other runs. events before line 6, where its last run starts' \
  "$T/err.txt" || { cat "$T/err.txt"; fail "no warning that the log holds two runs"; }
python3 - "$T/rep5/summary.json" <<'P' || fail "the two-run log's summary"
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
assert r["mode"] == "train" and r["method"] == "lora", r
assert r["tasks"]["a"]["metric"] == 25.0, r  # the resumption's test metric
P

# Options go through the option table: --out=DIR, a bare --no_plots between runs.
"$GRAFT" report --out="$T/rep4" "$T/central" --no_plots "$T/fed" > /dev/null || fail "--out=DIR"
[ -s "$T/rep4/summary.json" ] || fail "--out=DIR wrote no summary.json"
"$GRAFT" report --bogus "$T/central" 2> "$T/err.txt" && fail "an unknown option was accepted"
grep -q "unknown option 'bogus'" "$T/err.txt" || fail "unknown option not named"
echo "test_report: OK"
