#!/usr/bin/env bash
# The test command: installs the Debian dependencies, builds graft with
# warnings as errors, and runs every CTest test.
# Usage: scripts/test.sh              # Release build in build/ (what CI runs)
#        scripts/test.sh --sanitize   # Debug build with ASan, LSan and UBSan in
#                                     # build-asan/: leaks and UB fail the tests
#                                     # (tests/lsan.supp: Open MPI's own leaks)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=build
flags=(-DCMAKE_BUILD_TYPE=Release)
case "${1:-}" in
  "") ;;
  --sanitize) build=build-asan; flags=(-DCMAKE_BUILD_TYPE=Debug -DGRAFT_SANITIZE=ON) ;;
  *) echo "usage: scripts/test.sh [--sanitize]" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "usage: scripts/test.sh [--sanitize]" >&2; exit 2; }

bash scripts/install-deps.sh
echo "test: configuring $build/"
cmake -S . -B "$build" -DGRAFT_WERROR=ON "${flags[@]}"
echo "test: building"
cmake --build "$build" -j2
echo "test: running tests"
ctest --test-dir "$build" --output-on-failure -j2
