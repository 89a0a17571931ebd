#!/usr/bin/env bash
# Installs every Debian package graft needs to build, test and run, and the
# small quick-start pretraining corpus (perl-doc). Idempotent: checks what is
# already installed with dpkg-query and touches apt only for what is missing.
# Usage: scripts/install-deps.sh            # everything graft needs
#        scripts/install-deps.sh PKG...     # just these (used by other scripts)
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config          # toolchain
  libopenblas-openmp-dev                    # cblas_sgemm, LAPACK
  libopenmpi-dev openmpi-bin                # MPI transport
  libprotobuf-c-dev protobuf-c-compiler     # wire format
  libzmq3-dev                               # ZeroMQ transport (CurveZMQ)
  libcmocka-dev                             # unit tests
  libjansson-dev                            # JSON: safetensors headers, event logs
  libpcre2-dev                              # GPT-2 BPE: the pre-tokenizer's Unicode regex
  python3-torch python3-numpy               # PyTorch cross-checks
  gnuplot-nox                               # report plots
  perl-doc                                  # quick-start pretraining corpus
)

if [ $# -gt 0 ]; then
  PACKAGES=("$@")
fi

die() { echo "install-deps: error: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 ||
  die "dpkg-query not found: this script needs Debian 12 (bookworm) or a derivative"

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: already installed: ${PACKAGES[*]}"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 ||
    die "not root and sudo is not installed; run as root: apt-get install ${missing[*]}"
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

echo "install-deps: missing: ${missing[*]}"
echo "install-deps: running apt-get update"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update ||
  die "apt-get update failed (network or apt sources?)"
echo "install-deps: running apt-get install -y --no-install-recommends ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}" ||
  die "apt-get install failed for: ${missing[*]}"

still=()
for pkg in "${missing[@]}"; do
  is_installed "$pkg" || still+=("$pkg")
done
[ ${#still[@]} -eq 0 ] || die "still not installed after apt-get: ${still[*]}"
echo "install-deps: installed ${#missing[@]} packages"
