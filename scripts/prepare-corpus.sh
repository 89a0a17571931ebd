#!/usr/bin/env bash
# Builds the pretraining corpus for the trunk as plain-text files under
# OUT_DIR, ready for `graft_corpus_load(OUT_DIR, ...)`:
#   OUT_DIR/perl/*.pod      Debian perl-doc, the quick-start corpus (~9 MB)
# and with --full also (the DESIGN.md corpus, about 67 MB of English):
#   OUT_DIR/dict/*.txt      dict-gcide, dict-jargon, dict-foldoc, dict-devil
#   OUT_DIR/python/**.txt   python3.11-doc reStructuredText sources
# Missing packages are installed through scripts/install-deps.sh. Idempotent:
# up-to-date files are left alone, files that no longer belong are removed,
# and OUT_DIR always ends up holding exactly the requested corpus.
# Usage: scripts/prepare-corpus.sh [--full] [OUT_DIR]   (default data/corpus)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FULL=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "prepare-corpus: unknown option $arg (try --help)" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "prepare-corpus: more than one OUT_DIR" >&2; exit 2; }
       OUT="$arg" ;;
  esac
done
OUT="${OUT:-$ROOT/data/corpus}"

die() { echo "prepare-corpus: error: $*" >&2; exit 1; }

# Only these dictionaries: others (dict-wn is WordNet) would leak task data
# into pretraining.
DICTS=(gcide jargon foldoc devil)
PYDOC=/usr/share/doc/python3.11/html/_sources

pkgs=(perl-doc)
[ "$FULL" -eq 0 ] || pkgs+=("${DICTS[@]/#/dict-}" python3.11-doc)
bash "$ROOT/scripts/install-deps.sh" "${pkgs[@]}"

mkdir -p "$OUT" || die "cannot create $OUT"

# sync_section NAME SRC_DIR MODE PATTERN...: mirrors the files under SRC_DIR
# whose names match any PATTERN into OUT/NAME, keeping their relative paths;
# MODE is copy or gunzip (which also turns a .dict.dz suffix into .txt).
sync_section() {
  local name="$1" src="$2" mode="$3"
  shift 3
  local dst="$OUT/$name" rel target n_new=0 n=0 p
  local match=()
  for p in "$@"; do match+=(${match[0]+-o} -name "$p"); done
  declare -A keep=()
  mkdir -p "$dst"
  while IFS= read -r -d '' f; do
    rel="${f#"$src"/}"
    [ "$mode" = copy ] && target="$dst/$rel" || target="$dst/${rel%.dict.dz}.txt"
    keep["$target"]=1
    n=$((n + 1))
    [ -f "$target" ] && ! [ "$f" -nt "$target" ] && continue
    mkdir -p "$(dirname "$target")"
    if [ "$mode" = copy ]; then
      cp "$f" "$target.tmp"
    else
      gunzip -c "$f" > "$target.tmp" || die "cannot decompress $f"
    fi
    touch -r "$f" "$target.tmp"
    mv "$target.tmp" "$target"
    n_new=$((n_new + 1))
  done < <(find -L "$src" -type f \( "${match[@]}" \) -print0 | sort -z)
  [ "$n" -gt 0 ] || die "no $* files under $src"
  # Files left from another source version or an earlier layout.
  while IFS= read -r -d '' f; do
    [ -n "${keep[$f]:-}" ] || { echo "prepare-corpus: removing stale $f"; rm -f "$f"; }
  done < <(find "$dst" -type f -print0)
  find "$dst" -mindepth 1 -type d -empty -delete
  echo "prepare-corpus: $name: $n files ($n_new updated) from $src"
}

# perl-doc installs under /usr/share/perl/<version>/pod (5.36.0 on Debian 12;
# 5.36 is a symlink to it). perl-modules alone puts perldiag.pod there too,
# so take the version directory with the most pods.
PODDIR=""
best=0
for d in /usr/share/perl/*/pod; do
  [ -d "$d" ] && [ ! -L "$(dirname "$d")" ] || continue
  count=$(find "$d" -maxdepth 1 -name '*.pod' | wc -l)
  if [ "$count" -gt "$best" ]; then best=$count; PODDIR="$d"; fi
done
[ "$best" -gt 10 ] || die "perl-doc pods not found under /usr/share/perl/*/pod (is perl-doc installed?)"
sync_section perl "$PODDIR" copy '*.pod'

if [ "$FULL" -eq 1 ]; then
  for d in "${DICTS[@]}"; do
    [ -f "/usr/share/dictd/$d.dict.dz" ] || die "/usr/share/dictd/$d.dict.dz missing (dict-$d)"
  done
  sync_section dict /usr/share/dictd gunzip "${DICTS[@]/%/.dict.dz}"
  [ -d "$PYDOC" ] || die "$PYDOC missing (python3.11-doc)"
  sync_section python "$PYDOC" copy '*.txt'
else
  for extra in dict python; do
    if [ -d "$OUT/$extra" ]; then
      echo "prepare-corpus: removing $OUT/$extra (only built with --full)"
      rm -rf "${OUT:?}/$extra"
    fi
  done
fi

files=$(find "$OUT" -type f ! -name '.*' | wc -l)
bytes=$(find "$OUT" -type f ! -name '.*' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
echo "prepare-corpus: $OUT: $files files, $bytes bytes ($(du -sh "$OUT" | cut -f1))"
