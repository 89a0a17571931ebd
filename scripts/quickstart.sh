#!/usr/bin/env bash
# graft's main job on its embedded default, from a fresh Debian 12 machine:
#   1. installs what is missing (scripts/install-deps.sh) and builds graft;
#   2. prepares the pretraining corpus (Debian's perl-doc, ~9 MB of English)
#      and pretrains the `small` trunk briefly, printing its held-out loss;
#   3. fine-tunes that trunk on three synthetic tasks at once with MTLoRA
#      (shared + task LoRA) as a federated run on this machine: a coordinator
#      and 3 worker processes over ZeroMQ, each worker holding a third of
#      every task's data; prints per-task test metrics. The coordinator's
#      JSON-lines events land in runs/quickstart/federated/events.jsonl.
# Usage: scripts/quickstart.sh [--steps N]   (pretraining steps, default 300)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=300
if [ "${1:-}" = "--steps" ] && [ -n "${2:-}" ]; then STEPS="$2"; fi
if [ "${1:-}" = "--help" ]; then sed -n '2,12p' "$0"; exit 0; fi

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"

bash scripts/prepare-corpus.sh data/corpus
echo "quickstart: pretraining the small trunk for $STEPS steps"
build/graft pretrain --preset small --data data/corpus --steps "$STEPS" --warmup 30 \
  --eval_every 100 --log_every 25 --out runs/quickstart/trunk.safetensors

python3 scripts/synthetic_tasks.py data/synthetic >/dev/null
echo "quickstart: federated multi-task fine-tuning (MTLoRA), coordinator + 3 workers"
build/graft run --config examples/synthetic.conf --trunk runs/quickstart/trunk.safetensors \
  --workers 3 --rounds 6 --local_steps 25 --eval_every_rounds 3 --threads 1 \
  --out runs/quickstart/federated
