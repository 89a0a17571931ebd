#!/usr/bin/env python3
"""Copies a graft pretraining checkpoint without its optimiser state.

usage: strip_optimizer.py IN.safetensors OUT.safetensors

`graft pretrain` checkpoints carry the AdamW moments (optimizer.m,
optimizer.v) and the sampler state so that --resume is exact; a trunk to
fine-tune from needs only the weights. This keeps every other tensor and the
metadata (minus the train.* resume keys), byte for byte, in the same order.
"""
import json
import os
import struct
import sys


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    meta = {k: v for k, v in head.pop("__metadata__", {}).items() if not k.startswith("train.")}
    keep = sorted((k for k in head if not k.startswith("optimizer.")),
                  key=lambda k: head[k]["data_offsets"][0])
    out_head, chunks, off = {"__metadata__": meta}, [], 0
    for k in keep:
        b, e = head[k]["data_offsets"]
        out_head[k] = dict(head[k], data_offsets=[off, off + e - b])
        chunks.append(data[b:e])
        off += e - b
    text = json.dumps(out_head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    print(f"{dst}: {len(keep)} tensors, {off} bytes of data (dropped "
          f"{len(head) - len(keep)} optimiser tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
