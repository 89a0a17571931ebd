#!/usr/bin/python3
"""GFLOP/s of PyTorch's fp32 and bf16 matrix products at the shapes of a
`small` training step (batch 16 x 128 tokens = 2048 rows, C = 192): how far
bf16 products (oneDNN, avx512_bf16 where the CPU has it) would move the
fp32 roofline of README's performance section. Prints one line per shape
and dtype. Usage: /usr/bin/python3 scripts/bench_torch_matmul.py [--threads N]
(Debian's python3-torch lives under /usr/bin/python3)."""
import argparse
import time

import torch

SHAPES = [(2048, 192, 576), (2048, 192, 768), (2048, 768, 192), (2048, 192, 192)]


def gflops(m, k, n, dtype, reps=50):
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2.0 * m * k * n / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for m, k, n in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            print(f"({m},{k})x({k},{n}) {str(dtype).replace('torch.', ''):8s} "
                  f"gflops={gflops(m, k, n, dtype):.1f}")


if __name__ == "__main__":
    main()
