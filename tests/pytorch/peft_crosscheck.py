#!/usr/bin/python3
"""peft_crosscheck.py — PyTorch reference values for tests/test_peft.c's PEFT modules.

Reads IN (safetensors, written by the C test with graft_gpt2_save): the
trunk's weights (HF GPT-2 names, config in the metadata) and, as extra
tensors, every PEFT scope under graft_scope_st_entries' names
("shared.h.0.attn.c_attn.lora_A", "task.cls.red.scale", ...), each task's
chosen channels "task.NAME.channels.index" (L,k), and the batch:
batch.tokens (B,T), batch.targets (B,T, < 0 ignored), batch.pos (B),
batch.labels (B), all stored as F32 (exact integers). Metadata "peft.*"
gives the ranks, alphas, adapter width, k, the LoRA targets (bit set) and
the tasks ("cls:3,gen:0": name and number of classes; 0 = generation).

The modules, as common/peft.c defines them (linear weights [in, out]):
  lora      y += (alpha/r) (x A) B on each targeted projection, the shared
            pair and the task's pair
  channels  y[..., S] += x W + b on the MLP output projection (x is the
            GELU output, S the task's chosen channels)
  red       MLP output h <- s * h + b (after LoRA and channels)
  adapter   block output h <- h + relu(LN_a(h) D + d) U + u
  lntune    the task's own ln_1, ln_2 (per layer) and ln_f
  head      classification: logits = ln_f(x)[b, pos[b]] W + b, mean CE
Generation tasks use the tied LM head and the mean CE over targets >= 0.

For every task, in float64: the loss, the gradient of every tensor of the
shared scope and of the task's scope, and the first-order Taylor channel
scores |sum over all (b, t) of dL/dh_c * h_c| per layer (L, C), where h is
the MLP output that the channel deltas act on (after LoRA and channels,
before RED). Writes OUT (F32): NAME.loss (1), NAME.grad.<scope>.<tensor>,
NAME.scores (L,C).

Usage: /usr/bin/python3 tests/pytorch/peft_crosscheck.py --in IN --out OUT
Exits non-zero (with a message on stderr) on any error.
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402

# (graft projection bit, HF module path inside a block)
PROJS = [(0, ("attn", "c_attn")), (1, ("attn", "c_proj")), (2, ("mlp", "c_fc")),
         (3, ("mlp", "c_proj"))]
LN_EPS = 1e-5


class Adapted(nn.Module):
    """A trunk projection plus LoRA pairs; on the MLP output projection also
    the channel deltas and RED, and the capture of h for Taylor scores."""

    def __init__(self, base, pairs, channels=None, red=None, capture=None):
        super().__init__()
        self.base = base
        self.pairs = pairs        # [(A, B, scale)]
        self.channels = channels  # (W, b, S) or None
        self.red = red            # (s, b) or None
        self.capture = capture    # list to append h to, or None

    def forward(self, x):
        y = self.base(x)
        for A, B, scale in self.pairs:
            y = y + scale * ((x @ A) @ B)
        if self.channels is not None:
            W, b, S = self.channels
            y = y.index_add(-1, S, x @ W + b)
        if self.capture is not None:
            if not y.requires_grad:
                # nothing trainable upstream: make h a leaf to get dL/dh
                y = y.detach().requires_grad_(True)
            else:
                y.retain_grad()
            self.capture.append(y)
        if self.red is not None:
            s, b = self.red
            y = y * s + b
        return y


class TaskLN(nn.Module):
    """LayerNorm with the task's own (copied) scale and shift."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.w, self.b, eps=LN_EPS)


class AdapterBlock(nn.Module):
    def __init__(self, block, lnw, lnb, down, downb, up, upb):
        super().__init__()
        self.block = block
        self.p = (lnw, lnb, down, downb, up, upb)

    def forward(self, x):
        h = self.block(x)
        lnw, lnb, down, downb, up, upb = self.p
        a = F.layer_norm(h, (h.shape[-1],), lnw, lnb, eps=LN_EPS)
        return h + torch.relu(a @ down + downb) @ up + upb


def meta_int(meta, key):
    return int(meta["peft." + key])


def run_task(path, tensors, meta, name, K, dtype):
    """Builds a fresh trunk with task `name`'s modules, runs forward and
    backward; returns (loss, {tensor name: grad}, scores (L,C))."""
    model, _, _ = gpt2_ref.model_from_safetensors(path, dtype)
    for p in model.parameters():
        p.requires_grad_(False)  # the trunk is frozen
    cfg = model.cfg
    L, C = cfg["L"], cfg["C"]
    scope = "task." + name
    leaves = {}

    def leaf(full):
        if full not in leaves:
            leaves[full] = torch.tensor(tensors[full], dtype=dtype, requires_grad=True)
        return leaves[full]

    def has(suffix, sc=None):
        return ((sc or scope) + "." + suffix) in tensors

    targets_bits = meta_int(meta, "lora_targets")
    pairs_cfg = [("shared", meta_int(meta, "lora_shared_rank"),
                  float(meta["peft.lora_shared_alpha"])),
                 (scope, meta_int(meta, "lora_task_rank"), float(meta["peft.lora_task_alpha"]))]
    captures = []
    for l, block in enumerate(model.h):
        for bit, (mod, proj) in PROJS:
            parent = getattr(block, mod)
            base = getattr(parent, proj)
            hf = f"h.{l}.{mod}.{proj}"
            pairs = []
            for sc, r, alpha in pairs_cfg:
                if r > 0 and (targets_bits >> bit) & 1 and has(hf + ".lora_A", sc):
                    pairs.append((leaf(f"{sc}.{hf}.lora_A"), leaf(f"{sc}.{hf}.lora_B"), alpha / r))
            channels = red = capture = None
            if bit == 3:
                capture = captures
                if has("channels.weight"):
                    k = meta_int(meta, "channels_k")
                    W = leaf(scope + ".channels.weight")[l * 4 * C:(l + 1) * 4 * C]
                    b = leaf(scope + ".channels.bias")[l]
                    S = torch.from_numpy(tensors[scope + ".channels.index"][l].astype(np.int64))
                    assert S.numel() == k and len(set(S.tolist())) == k
                    channels = (W, b, S)
                if has("red.scale"):
                    red = (leaf(scope + ".red.scale")[l], leaf(scope + ".red.bias")[l])
            setattr(parent, proj, Adapted(base, pairs, channels, red, capture))
        if has("ln_1.weight"):
            block.ln_1 = TaskLN(leaf(scope + ".ln_1.weight")[l], leaf(scope + ".ln_1.bias")[l])
            block.ln_2 = TaskLN(leaf(scope + ".ln_2.weight")[l], leaf(scope + ".ln_2.bias")[l])
    if has("ln_f.weight"):
        model.ln_f = TaskLN(leaf(scope + ".ln_f.weight"), leaf(scope + ".ln_f.bias"))
    if has("adapter.ln.weight"):
        m = meta_int(meta, "adapter_dim")
        for l in range(L):
            model.h[l] = AdapterBlock(
                model.h[l], leaf(scope + ".adapter.ln.weight")[l],
                leaf(scope + ".adapter.ln.bias")[l],
                leaf(scope + ".adapter.down.weight")[l * C:(l + 1) * C],
                leaf(scope + ".adapter.down.bias")[l],
                leaf(scope + ".adapter.up.weight")[l * m:(l + 1) * m],
                leaf(scope + ".adapter.up.bias")[l])

    tokens = torch.from_numpy(tensors["batch.tokens"].astype(np.int64))
    B, T = tokens.shape
    x = model.wte(tokens) + model.wpe(torch.arange(T))[None]
    for block in model.h:
        x = block(x)
    x = model.ln_f(x)
    if K > 0:
        pos = torch.from_numpy(tensors["batch.pos"].astype(np.int64))
        labels = torch.from_numpy(tensors["batch.labels"].astype(np.int64))
        pooled = x[torch.arange(B), pos]
        logits = pooled @ leaf(scope + ".head.weight") + leaf(scope + ".head.bias")
        loss = F.cross_entropy(logits, labels)
    else:
        targets = torch.from_numpy(tensors["batch.targets"].astype(np.int64))
        loss = gpt2_ref.lm_loss(x @ model.wte.weight.t(), targets)
    loss.backward()

    grads = {}
    for full in tensors:
        if full.startswith("shared.") or (full.startswith(scope + ".")
                                          and not full.endswith(".channels.index")):
            lf = leaves.get(full)
            g = lf.grad if lf is not None and lf.grad is not None else None
            grads[full] = g.detach() if g is not None else torch.zeros(tensors[full].shape)
    assert len(captures) == L
    scores = torch.stack([(h.grad * h).sum(dim=(0, 1)).abs() for h in captures]).detach()
    return loss.detach(), grads, scores


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    tensors, meta = gpt2_ref.read_safetensors(args.inp)
    out = {}
    summary = []
    for item in meta["peft.tasks"].split(","):
        name, K = item.split(":")
        loss, grads, scores = run_task(args.inp, tensors, meta, name, int(K), dtype)
        out[name + ".loss"] = loss.reshape(1)
        for full, g in grads.items():
            out[f"{name}.grad.{full}"] = g
        out[name + ".scores"] = scores
        summary.append(f"{name} loss {float(loss):.6f} ({len(grads)} module gradients)")
    gpt2_ref.write_safetensors(args.out, out)
    print("peft_crosscheck.py: " + "; ".join(summary) + " -> " + args.out)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a clear one-line reason for the C test's log
        print(f"peft_crosscheck.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
