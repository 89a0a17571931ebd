#!/usr/bin/python3
"""hf_gpt2.py — the PyTorch side of tests/test_gpt2_hf.sh.

  make DIR VOCAB_DIR [SIZE]
                       writes a GPT-2 checkpoint folder as Hugging Face
                       keeps one: model.safetensors (a GPT2LMHeadModel's
                       tensor names, "transformer." prefix, the causal-mask
                       buffers h.{i}.attn.bias, the tied lm_head.weight, and
                       only {"format": "pt"} as metadata), config.json, and
                       GPT-2's vocab.json and merges.txt. The weights are the
                       reference trunk's GPT-2 initialisation (random) with
                       V = 50257, T = 64, L = 2, NH = 2, C = 64: a real GPT-2
                       layout and vocabulary at a size a test can run. SIZE
                       124M instead gives GPT-2 small's shape (T = 1024,
                       L = 12, NH = 12, C = 768: 124M parameters, 700 MB).
  loss DIR CASES       the mean next-token loss over the target tokens of
                       generation examples, encoded as graft encodes them
                       with GPT-2's tokenizer (<|endoftext|> prompt
                       <|endoftext|> target <|endoftext|>); CASES is the
                       JSON of tests/bpe/encode_ref.js for the texts
                       prompt1, target1, prompt2, target2, ...
"""

import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402

CFG = dict(V=50257, T=64, L=2, NH=2, C=64)
GPT2_SMALL = dict(V=50257, T=1024, L=12, NH=12, C=768)
EOT = 50256


def make(out, vocab_dir):
    os.makedirs(out, exist_ok=True)
    model = gpt2_ref.GPT2(**CFG).init_weights(seed=7)
    tensors = {}
    for name, p in model.named_parameters():
        tensors["transformer." + name] = p
    T = CFG["T"]
    for i in range(CFG["L"]):
        tensors[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    tensors["lm_head.weight"] = model.wte.weight
    gpt2_ref.write_safetensors(os.path.join(out, "model.safetensors"), tensors,
                               {"format": "pt"})
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
              "vocab_size": CFG["V"], "n_positions": T, "n_ctx": T, "n_layer": CFG["L"],
              "n_head": CFG["NH"], "n_embd": CFG["C"], "activation_function": "gelu_new",
              "layer_norm_epsilon": 1e-5, "bos_token_id": EOT, "eos_token_id": EOT}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(vocab_dir, name), os.path.join(out, name))


def loss(folder, cases_path):
    tensors, _ = gpt2_ref.read_safetensors(os.path.join(folder, "model.safetensors"))
    model = gpt2_ref.GPT2(**CFG).load_state(tensors)
    cases = json.load(open(cases_path, encoding="utf-8"))
    T = CFG["T"]
    rows, targets = [], []
    for prompt, target in zip(cases[0::2], cases[1::2]):
        seq = [EOT] + prompt["ids"] + [EOT] + target["ids"] + [EOT]
        assert len(seq) <= T + 1, "keep the test's examples short: graft would cut them"
        plen = len(prompt["ids"]) + 2
        inp = seq[:-1] + [EOT] * (T - len(seq) + 1)
        tgt = [seq[j + 1] if j + 1 >= plen and j + 1 < len(seq) else -1 for j in range(T)]
        rows.append(inp)
        targets.append(tgt)
    with torch.no_grad():
        logits, _ = model(torch.tensor(rows))
        t = torch.tensor(targets)
        total = F.cross_entropy(logits.reshape(-1, CFG["V"]), t.reshape(-1), ignore_index=-1,
                                reduction="sum")
    print(f"loss {float(total) / int((t >= 0).sum()):.6f}")


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "make":
        if len(sys.argv) == 5:
            if sys.argv[4] != "124M":
                sys.exit(f"unknown SIZE {sys.argv[4]!r} (124M)")
            CFG.update(GPT2_SMALL)
        make(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "loss":
        loss(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
