#!/usr/bin/env bash
# Training-step throughput of graft next to PyTorch on the same model and
# work: `graft bench step` and scripts/bench_torch.py (the reference trunk in
# tests/pytorch/gpt2_ref.py), one after the other so they do not share cores,
# both with batch 16 of random tokens, forward + backward + clip + AdamW of
# the same method: full, or lora / adapter / red on a frozen trunk (the same
# modules on both sides; see gpt2_ref.prepare_method).
# Prints both programs' output, then as the last line
#   graft_tokens_per_s=<N> pytorch_tokens_per_s=<N> ratio=<graft/pytorch>
# With --repeat R the pair runs R times, alternating, and the best of each
# side counts (on a shared machine the slowest runs measure the neighbours).
# Both sides run with the same OMP_WAIT_POLICY (--wait-policy): by default
# the OpenMP runtime's own (the variable unset), what a program gets out of
# the box; `passive` on a machine shared with other busy processes, where
# spinning threads take the cores their own team and the neighbours need
# (it slows PyTorch's many small parallel regions more than graft's), or
# `active`.
# --precision sets graft's products (fp32, or bf16: bf16 operands, fp32 sums,
# on CPUs with AVX512_BF16), --torch-precision PyTorch's (fp32, or bf16
# under torch.autocast): the reference of the performance issues is PyTorch
# in fp32; `--precision bf16 --torch-precision bf16` compares the two
# mixed-precision steps.
# --trunk FILE times the model of a checkpoint (graft's, or a Hugging Face
# GPT-2 model.safetensors with config.json beside it) on both sides instead
# of a preset's, --seq N at N tokens per sequence (default: its context).
# --torch-model nanogpt (full only) times scripts/nanogpt_torch.py, a second
# PyTorch GPT-2 written independently from PyTorch's stock modules, instead
# of the reference trunk: a check on the reference itself.
# Usage: scripts/bench-step.sh [--preset tiny|small|base]
#          [--method full|lora|adapter|red] [--threads N] [--steps N] [--repeat R]
#          [--wait-policy passive|active|default] [--precision fp32|bf16]
#          [--torch-precision fp32|bf16] [--torch-model ref|nanogpt]
#          [--trunk FILE] [--seq N] [--batch N]
# Defaults: --preset small --method full --threads 2 --steps 10 --repeat 1
#           --wait-policy default --precision fp32 --torch-precision fp32
#           --torch-model ref --batch 16.
# Needs build/graft (cmake --build build; GRAFT_BIN=path picks another
# binary) and Debian's python3-torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET=small
METHOD=full
THREADS=2
STEPS=10
REPEAT=1
WAIT_POLICY=default
PRECISION=fp32
TORCH_PRECISION=fp32
TORCH_MODEL=ref
TRUNK=""
SEQ=0
BATCH=16
PYTHON=/usr/bin/python3 # Debian's interpreter: python3-torch lives there

die() { echo "bench-step: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --preset|--method|--threads|--steps|--repeat|--wait-policy|--precision|--torch-precision|\
    --torch-model|--trunk|--seq|--batch)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --preset) PRESET="$2" ;;
        --method) METHOD="$2" ;;
        --threads) THREADS="$2" ;;
        --steps) STEPS="$2" ;;
        --repeat) REPEAT="$2" ;;
        --wait-policy) WAIT_POLICY="$2" ;;
        --precision) PRECISION="$2" ;;
        --torch-precision) TORCH_PRECISION="$2" ;;
        --torch-model) TORCH_MODEL="$2" ;;
        --trunk) TRUNK="$2" ;;
        --seq) SEQ="$2" ;;
        --batch) BATCH="$2" ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,38p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, not '$THREADS'"
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, not '$STEPS'"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "--repeat must be a positive integer, not '$REPEAT'"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "--batch must be a positive integer, not '$BATCH'"
[[ "$SEQ" =~ ^[0-9]+$ ]] || die "--seq must be a non-negative integer, not '$SEQ'"
[ -z "$TRUNK" ] || [ -f "$TRUNK" ] || die "--trunk $TRUNK: no such file"
for p in "$PRECISION" "$TORCH_PRECISION"; do
  [[ "$p" == fp32 || "$p" == bf16 ]] || die "precisions are fp32 or bf16, not '$p'"
done
[[ "$TORCH_MODEL" == ref || "$TORCH_MODEL" == nanogpt ]] ||
  die "--torch-model must be ref or nanogpt, not '$TORCH_MODEL'"
[[ "$TORCH_MODEL" == ref || "$METHOD" == full ]] || die "--torch-model nanogpt times --method full only"
case "$WAIT_POLICY" in
  passive|active) export OMP_WAIT_POLICY="$WAIT_POLICY" ;;
  default) unset OMP_WAIT_POLICY ;;
  *) die "--wait-policy must be passive, active or default, not '$WAIT_POLICY'" ;;
esac

GRAFT="${GRAFT_BIN:-$ROOT/build/graft}" # GRAFT_BIN=path: time another build
[ -x "$GRAFT" ] || die "$GRAFT not found: build it first (cmake -S . -B build && cmake --build build)"
"$PYTHON" -c 'import torch' 2>/dev/null ||
  die "$PYTHON cannot import torch: install python3-torch (scripts/install-deps.sh)"

# The value of key=... on the last line that has it.
field() { grep -o "$1=[0-9.]*" | tail -n 1 | cut -d= -f2; }

# The larger of two numbers.
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a + 0 > b + 0) ? a : b }'; }

echo "== method=$METHOD preset=$PRESET threads=$THREADS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}" \
  "graft=$PRECISION pytorch=$TORCH_PRECISION torch_model=$TORCH_MODEL"
graft_best=""
torch_best=""
for ((run = 1; run <= REPEAT; run++)); do
  echo "== graft (run $run/$REPEAT)"
  graft_out="$("$GRAFT" bench step --preset "$PRESET" --method "$METHOD" --threads "$THREADS" \
    --batch "$BATCH" --steps "$STEPS" --precision "$PRECISION" --trunk "$TRUNK" --seq "$SEQ")" ||
    die "graft bench step failed"
  echo "$graft_out"
  graft_tps="$(echo "$graft_out" | field tokens_per_s)"
  [ -n "$graft_tps" ] || die "no tokens_per_s in graft's output"
  graft_best="$(best "$graft_tps" "$graft_best")"

  echo "== pytorch (run $run/$REPEAT)"
  torch_out="$(OMP_NUM_THREADS="$THREADS" "$PYTHON" "$ROOT/scripts/bench_torch.py" \
    --preset "$PRESET" --method "$METHOD" --threads "$THREADS" --batch "$BATCH" \
    --steps "$STEPS" --precision "$TORCH_PRECISION" --model "$TORCH_MODEL" --seq "$SEQ" \
    ${TRUNK:+--trunk "$TRUNK"})" ||
    die "the PyTorch benchmark failed (see above)"
  echo "$torch_out"
  torch_tps="$(echo "$torch_out" | field tokens_per_s)"
  [ -n "$torch_tps" ] || die "no tokens_per_s in the PyTorch benchmark's output"
  torch_best="$(best "$torch_tps" "$torch_best")"
done

ratio="$(awk -v a="$graft_best" -v b="$torch_best" 'BEGIN { printf "%.3f", a / b }')"
echo "graft_tokens_per_s=$graft_best pytorch_tokens_per_s=$torch_best ratio=$ratio"
