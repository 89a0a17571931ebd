#!/usr/bin/env python3
"""Compares the module tensors of two graft module checkpoints bit for bit
(or, with --atol, up to an absolute tolerance).

Optimizer moments (optimizer.*) and metadata are left out: a federated
coordinator keeps no optimiser state of its own and counts rounds where
`graft train` counts steps. Prints each tensor that differs (with the
largest absolute difference) and exits 1 if any does, or if the two files
hold different tensor names or shapes.

usage: compare_modules.py A.safetensors B.safetensors [--prefix P] [--atol X] [--expect-differ]
  --prefix P       only tensors whose name starts with P
  --atol X         a tensor whose values all differ by at most X counts as equal
                   (each such tensor is still printed, with "within atol")
  --expect-differ  exit 0 only if some compared tensor differs
"""
import json
import struct
import sys


def tensors(path, prefix):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        if name.startswith("optimizer.") or not name.startswith(prefix):
            continue
        b, e = h["data_offsets"]
        out[name] = (tuple(h["shape"]), data[b:e])
    return out


def main():
    args = sys.argv[1:]
    prefix = args[args.index("--prefix") + 1] if "--prefix" in args else ""
    atol = float(args[args.index("--atol") + 1]) if "--atol" in args else 0.0
    a, b = tensors(args[0], prefix), tensors(args[1], prefix)
    if not a:
        print("no tensor named %s* in %s" % (prefix, args[0]))
        return 1
    if sorted(a) != sorted(b):
        print("tensor names differ:", sorted(set(a) ^ set(b)))
        return 1
    bad = 0
    for name in sorted(a):
        (sa, da), (sb, db) = a[name], b[name]
        if sa != sb:
            print("%s: shape %s vs %s" % (name, sa, sb))
            bad += 1
        elif da != db:
            xa = struct.unpack("<%df" % (len(da) // 4), da)
            xb = struct.unpack("<%df" % (len(db) // 4), db)
            diff = max(abs(p - q) for p, q in zip(xa, xb))
            within = diff <= atol  # NaN never is
            print("%s: max |diff| %.3g%s" % (name, diff, " (within atol)" if within else ""))
            bad += not within
    print("%d tensors compared, %d differ" % (len(a), bad))
    if "--expect-differ" in args:
        return 0 if bad else 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
