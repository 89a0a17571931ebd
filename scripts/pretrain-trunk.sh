#!/usr/bin/env bash
# Reproduces the committed pretrained trunk models/small/trunk.safetensors:
# the `small` preset (V=260 T=128 L=4 NH=4 C=192, 1.85M parameters) trained
# for 4,000 steps of 16x128 byte tokens (8.2M tokens) on the DESIGN.md corpus
# (scripts/prepare-corpus.sh --full: dict-gcide, dict-jargon, dict-foldoc,
# dict-devil, python3.11-doc and perl-doc; about 67 MB of English, disjoint
# from the task data). One thread, so that it can run beside other work; it
# takes about 45 minutes on an idle 2-core machine (more when shared).
# Usage: scripts/pretrain-trunk.sh [OUT_DIR]   (default runs/trunk-small)
# The log goes to OUT_DIR/pretrain.log and the weights without the optimiser
# state (scripts/strip_optimizer.py) to OUT_DIR/weights.safetensors; copy that
# to models/small/trunk.safetensors, and the log, to replace the committed trunk.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
OUT="${1:-$ROOT/runs/trunk-small}"
cd "$ROOT"
bash scripts/prepare-corpus.sh --full data/corpus
[ -x build/graft ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2; }
mkdir -p "$OUT"
OMP_WAIT_POLICY=PASSIVE build/graft pretrain --preset small --data data/corpus \
  --out "$OUT/trunk.safetensors" --steps 4000 --batch 16 --lr 2e-3 --warmup 200 \
  --threads 1 --eval_every 500 --checkpoint_every 500 --log_every 50 --seed 1337 \
  2>&1 | tee "$OUT/pretrain.log"
python3 scripts/strip_optimizer.py "$OUT/trunk.safetensors" "$OUT/weights.safetensors"
