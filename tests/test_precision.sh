#!/bin/sh
# --precision through the commands: graft bench step at bf16 on the tiny
# trunk and graft train on a small one, whose products (512 tokens a batch)
# are large enough for bf16 (same test loss as fp32 to 2 decimals, the
# bench line names the bf16 peak), and an unknown precision refused with
# exit 2 and the option named. Without AVX512_BF16 bf16 must be refused;
# the rest is skipped (exit 77).
# Usage: test_precision.sh GRAFT_BINARY SOURCE_DIR
set -eu
GRAFT="$1"
SRC="$2"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
fail() { echo "test_precision: FAIL: $*" >&2; exit 1; }

if "$GRAFT" bench step --preset tiny --precision fp16 --steps 1 >"$T/out" 2>"$T/err"; then
  fail "--precision fp16 accepted"
fi
grep -q "unknown --precision 'fp16'" "$T/err" || fail "no error naming --precision: $(cat "$T/err")"

if ! grep -q avx512_bf16 /proc/cpuinfo; then
  if "$GRAFT" bench step --preset tiny --precision bf16 --steps 1 >/dev/null 2>"$T/err"; then
    fail "bf16 accepted on a CPU without AVX512_BF16"
  fi
  echo "test_precision: no avx512_bf16 here: bf16 refused as it should be; rest skipped"
  exit 77
fi

"$GRAFT" bench step --preset tiny --method lora --threads 1 --untimed_steps 1 --steps 2 \
  --precision bf16 >"$T/bench" || fail "bench step --precision bf16 failed"
grep -q "precision=bf16 .*bf16_peak_gflops=" "$T/bench" || fail "bench line: $(cat "$T/bench")"
grep -q "^tokens_per_s=[0-9]" "$T/bench" || fail "no tokens_per_s line"

# The same short training at both precisions: the test loss agrees to
# 0.01 (bf16 rounds the products' operands only) but not to the bit (bf16
# did run: both runs are deterministic).
TASK="spam:classification:$SRC/tests/data/tasks-quick/spam.tsv"
for p in fp32 bf16; do
  "$GRAFT" train --preset small --tasks "$TASK" --method lora --steps 10 --eval_every 10 \
    --batch 4 --eval_max 32 --threads 1 --precision "$p" --out "$T/$p" >"$T/$p.log" 2>&1 ||
    fail "graft train --precision $p failed: $(tail -3 "$T/$p.log")"
  grep '"event":"eval"' "$T/$p/events.jsonl" | grep '"split":"test"' |
    sed 's/.*"loss":\([0-9.e+-]*\).*/\1/' >"$T/$p.loss"
done
[ -s "$T/fp32.loss" ] || fail "no test eval in the fp32 run"
paste "$T/fp32.loss" "$T/bf16.loss" | awk '{ d = $1 - $2; if (d < 0) d = -d;
  if (d > 0.01 || d == 0) { print "test loss " $1 " (fp32) vs " $2 " (bf16)"; exit 1 } }' ||
  fail "bf16 training differs from fp32"
echo "test_precision: ok ($(paste -d' ' "$T/fp32.loss" "$T/bf16.loss" | head -1))"
