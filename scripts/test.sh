#!/usr/bin/env bash
# The test command: installs the Debian dependencies, builds graft with
# warnings as errors, and runs every CTest test.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh
echo "test: configuring build/"
cmake -S . -B build -DGRAFT_WERROR=ON -DCMAKE_BUILD_TYPE=Release
echo "test: building"
cmake --build build -j2
echo "test: running tests"
ctest --test-dir build --output-on-failure -j2
