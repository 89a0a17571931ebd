#!/usr/bin/python3
"""bench_torch.py — the PyTorch side of scripts/bench-step.sh: training-step
throughput of the same GPT-2 trunk (tests/pytorch/gpt2_ref.py) that
`graft bench step` times, on the same kind of work:

  preset config (tiny, small, base as graft_gpt2_preset), batch of random
  byte tokens (targets = inputs shifted by one), forward + backward + global
  gradient-norm clip (1.0) + AdamW with graft_adamw_defaults (lr 3e-4,
  betas 0.9/0.999, eps 1e-8, no weight decay), torch.set_num_threads(N);
  untimed warm-up steps, then timed steps. fp32, or with --precision bf16
  the step under torch.autocast("cpu", dtype=torch.bfloat16): the linear
  layers' and attention's products in bf16 (oneDNN), parameters and
  optimizer in fp32 — PyTorch's own mixed precision, next to graft's
  --precision bf16.

Methods (gpt2_ref.prepare_method, the same modules as `graft bench step`):
full; lora (one rank-8 pair, alpha 16, on the four projections of every
block, trunk frozen); adapter (width 16 after every block); red. With a
frozen trunk only the modules' parameters have requires_grad, so autograd
computes no trunk weight gradient.

--trunk FILE takes the model's shape (not its weights) from a checkpoint:
graft's metadata, or the config.json beside a Hugging Face GPT-2
model.safetensors; --seq N sets the sequence length (default: the context).

--model nanogpt times scripts/nanogpt_torch.py instead: a second GPT-2,
written independently from PyTorch's stock modules (nn.Linear, nn.GELU,
torch.optim.AdamW, clip_grad_norm_), full fine-tuning only: a check that the
reference's rate is PyTorch's and not its own.

Prints a line of settings, then `tokens_per_s=<N>` as the last line.

Usage: /usr/bin/python3 scripts/bench_torch.py [--preset small]
       [--method full|lora|adapter|red] [--threads 2] [--batch 16]
       [--warmup 3] [--steps 10] [--seed 1] [--precision fp32|bf16]
       [--model ref|nanogpt] [--trunk FILE] [--seq N]
"""

import argparse
import contextlib
import json
import os
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "pytorch"))

import torch  # noqa: E402

import gpt2_ref  # noqa: E402
import nanogpt_torch  # noqa: E402


def trunk_config(path):
    """The model shape of a checkpoint: graft's config.* metadata, else the
    Hugging Face config.json beside it."""
    with open(path, "rb") as f:  # the header only: the weights are not needed
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    if "config.V" in meta:
        return {k: int(meta["config." + k]) for k in ("V", "T", "L", "NH", "C")}
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")) as f:
        hf = json.load(f)
    return dict(V=hf["vocab_size"], T=hf["n_positions"], L=hf["n_layer"], NH=hf["n_head"],
                C=hf["n_embd"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(gpt2_ref.PRESETS))
    ap.add_argument("--method", default="full", choices=gpt2_ref.METHODS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--model", default="ref", choices=["ref", "nanogpt"])
    ap.add_argument("--trunk", help="checkpoint whose model shape to time (instead of --preset)")
    ap.add_argument("--seq", type=int, default=0, help="tokens per sequence (0: the context)")
    args = ap.parse_args()
    if args.threads < 1 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--threads, --batch and --steps must be >= 1, --warmup >= 0")
    if args.model == "nanogpt" and args.method != "full":
        ap.error("--model nanogpt times full fine-tuning only")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = trunk_config(args.trunk) if args.trunk else gpt2_ref.PRESETS[args.preset]
    if args.seq < 0 or args.seq > cfg["T"]:
        ap.error(f"--seq must be 0..{cfg['T']} (the model's context)")
    if args.model == "nanogpt":
        model, train_step = nanogpt_torch.make(cfg)
        nparams = sum(p.numel() for p in model.parameters())
        trainable = list(model.parameters())
    else:
        model = gpt2_ref.GPT2(**cfg).init_weights(args.seed)
        nparams = sum(p.numel() for p in model.parameters())  # the trunk
        trainable = gpt2_ref.prepare_method(model, args.method, seed=args.seed)
        d = gpt2_ref.adamw_defaults()
        opt = gpt2_ref.make_adamw(trainable, d["lr"], d["beta1"], d["beta2"], d["eps"],
                                  d["weight_decay"])

        def train_step(inputs, targets):
            return gpt2_ref.train_step(model, opt, inputs, targets, d["grad_clip"])[0]

    B, T = args.batch, args.seq or cfg["T"]
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, 256 if cfg["V"] < 1024 else cfg["V"] - 1, (B * T + 1,), generator=g)
    inputs, targets = tokens[:-1].view(B, T), tokens[1:].view(B, T)

    def precision():
        if args.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    for _ in range(args.warmup):
        with precision():
            train_step(inputs, targets)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        with precision():
            loss = train_step(inputs, targets)
    elapsed = time.perf_counter() - t0

    tps = args.steps * B * T / elapsed
    ntrain = sum(p.numel() for p in trainable)
    print(f"{'trunk=' + args.trunk if args.trunk else 'preset=' + args.preset} "
          f"method={args.method} model={args.model} "
          f"precision={args.precision} "
          f"threads={torch.get_num_threads()} "
          f"batch={B} seq={T} params={nparams} trainable={ntrain} loss={loss:.4f} "
          f"step_ms={1e3 * elapsed / args.steps:.1f} torch={torch.__version__}")
    print(f"tokens_per_s={tps:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
