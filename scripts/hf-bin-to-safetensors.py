#!/usr/bin/python3
"""hf-bin-to-safetensors.py — converts a Hugging Face GPT-2 checkpoint
folder's pytorch_model.bin (a pickled PyTorch state dict, which graft, in C,
does not read) into the model.safetensors graft loads, in the same folder:
every tensor as F32 under its own name, metadata {"format": "pt"}, written
atomically. Tensors that share storage (the tied lm_head.weight) are copied.
config.json, vocab.json and merges.txt stay as they are.

Usage: /usr/bin/python3 scripts/hf-bin-to-safetensors.py DIR
Needs Debian's python3-torch (scripts/install-deps.sh).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "pytorch"))

import torch  # noqa: E402

import gpt2_ref  # noqa: E402


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    folder = sys.argv[1]
    src = os.path.join(folder, "pytorch_model.bin")
    dst = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(src):
        sys.exit(f"hf-bin-to-safetensors: {src}: no such file")
    state = torch.load(src, map_location="cpu")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        sys.exit(f"hf-bin-to-safetensors: {src}: not a state dict of tensors")
    tensors = {name: t.detach().float().contiguous().clone() for name, t in state.items()}
    gpt2_ref.write_safetensors(dst, tensors, {"format": "pt"})
    print(f"hf-bin-to-safetensors: wrote {dst} ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
