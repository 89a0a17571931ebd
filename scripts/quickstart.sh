#!/usr/bin/env bash
# graft's main job on its embedded default, from a fresh Debian 12 machine:
#   1. installs what is missing (scripts/install-deps.sh) and builds graft;
#   2. fine-tunes the committed pretrained trunk (models/small) on the five
#      real tasks at once (the committed slice tests/data/tasks-quick: language
#      id, WordNet supersenses and glosses, spam, State of the Union eras)
#      with MTLoRA (a shared rank-8 LoRA pair plus a rank-4 pair per task) as a
#      federated run on this machine: a coordinator and 3 worker processes
#      over ZeroMQ, each holding a third of every task's training data;
#   3. prints per-task test metrics, then `graft report`'s summary row and
#      plots (runs/quickstart/report/). The coordinator's JSON-lines events are
#      in runs/quickstart/events.jsonl; a previous quick start's folder is
#      moved to runs/quickstart.previous.
# Usage: scripts/quickstart.sh [--workers K] [any graft run option...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"

# graft never writes a new run over an old one: the last quick start's
# folder is kept as runs/quickstart.previous.
if [ -e runs/quickstart ]; then
  rm -rf runs/quickstart.previous
  mv runs/quickstart runs/quickstart.previous
  echo "quickstart: the previous run is now in runs/quickstart.previous"
fi
echo "quickstart: federated multi-task fine-tuning (MTLoRA) of models/small, coordinator + 3 workers"
OMP_WAIT_POLICY=PASSIVE build/graft run --config examples/tasks-quick.conf --workers 3 \
  --threads 1 --out runs/quickstart "$@"
build/graft report --out runs/quickstart/report runs/quickstart
