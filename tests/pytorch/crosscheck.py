#!/usr/bin/python3
"""crosscheck.py — PyTorch reference values for tests/test_torch_crosscheck.c.

Reads DIR/model.safetensors, written by the C test with graft_gpt2_save: the
trunk's weights (HF GPT-2 names, config in the metadata) plus two extra
tensors, batch.inputs and batch.targets (B,T), token ids stored as F32
(exact below 2^24); targets < 0 are ignored by the loss.

Computes in float64 (so the reference's own rounding is negligible next to
graft's float32; --dtype float32 shows PyTorch's own fp32 error instead)
and writes DIR/OUT (safetensors, values as F32):
  logits          (B,T,V) of the initial weights
  loss            (1)     mean cross-entropy over targets >= 0
  grad.<name>     gradient of every parameter at the initial weights
  step.loss       (steps) loss before each AdamW step
  step.grad_norm  (steps) global gradient L2 norm before clipping
  step.clip_scale (steps) multiplier clipping applied (1 = no clipping)
  adamw.<name>    every parameter after `steps` AdamW steps on the batch
  update.<name>   adamw.<name> minus the initial parameter, subtracted in
                  float64 (the C test compares updates: rounding the
                  parameters to F32 first would blur them)

Usage: /usr/bin/python3 tests/pytorch/crosscheck.py --dir DIR [--out ref.safetensors]
       [--steps 3] [--lr 1e-3] [--weight_decay 0.1] [--grad_clip 1.0]
       [--beta1 0.9] [--beta2 0.999] [--eps 1e-8] [--dtype float64|float32]
Exits non-zero (with a message on stderr) on any error.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402


def main():
    d = gpt2_ref.adamw_defaults()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", default="ref.safetensors")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight_decay", type=float, default=0.1)
    ap.add_argument("--grad_clip", type=float, default=d["grad_clip"])
    ap.add_argument("--beta1", type=float, default=d["beta1"])
    ap.add_argument("--beta2", type=float, default=d["beta2"])
    ap.add_argument("--eps", type=float, default=d["eps"])
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = ap.parse_args()

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    model, tensors, _ = gpt2_ref.model_from_safetensors(
        os.path.join(args.dir, "model.safetensors"), dtype)
    inputs = torch.from_numpy(tensors["batch.inputs"].astype(np.int64))
    targets = torch.from_numpy(tensors["batch.targets"].astype(np.int64))
    V, T = model.cfg["V"], model.cfg["T"]
    if inputs.shape != targets.shape or inputs.ndim != 2 or inputs.shape[1] > T:
        raise ValueError(f"batch shapes {tuple(inputs.shape)}, {tuple(targets.shape)} "
                         f"do not fit T={T}")
    if inputs.min() < 0 or inputs.max() >= V or targets.max() >= V:
        raise ValueError("token ids out of range")

    out = {}
    logits, loss = model(inputs, targets)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.detach().clone()
        p.grad = None

    opt = gpt2_ref.make_adamw(model.parameters(), args.lr, args.beta1, args.beta2, args.eps,
                              args.weight_decay)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses, norms, scales = [], [], []
    for _ in range(args.steps):
        l, n, s = gpt2_ref.train_step(model, opt, inputs, targets, args.grad_clip)
        losses.append(l)
        norms.append(n)
        scales.append(s)
    out["step.loss"] = np.array(losses)
    out["step.grad_norm"] = np.array(norms)
    out["step.clip_scale"] = np.array(scales)
    for name, p in model.named_parameters():
        out["adamw." + name] = p.detach()
    for name, p in model.named_parameters():
        out["update." + name] = p.detach() - initial[name]

    gpt2_ref.write_safetensors(os.path.join(args.dir, args.out), out,
                               {"steps": args.steps, "lr": args.lr, "grad_clip": args.grad_clip})
    print(f"crosscheck.py: loss {float(loss):.6f}, grad norms "
          f"{' '.join(f'{n:.4f}' for n in norms)}, clip scales "
          f"{' '.join(f'{s:.4f}' for s in scales)} -> {os.path.join(args.dir, args.out)}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a clear one-line reason for the C test's log
        print(f"crosscheck.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
