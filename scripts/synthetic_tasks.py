#!/usr/bin/env python3
"""Writes a small synthetic multi-task problem in graft's task TSV format.

The three tasks share structure (all read letter sequences over the same
alphabet), so a shared module helps each of them:
  majority  (classification, 4 labels): the most frequent letter of 12
            letters drawn from "abcd" (ties are re-drawn);
  pairs     (classification, 2 labels): whether the letters contain the
            bigram "ab";
  shift     (generation): the prompt's letters each moved one step along
            the alphabet ("abc" -> "bcd").
Deterministic from --seed; whole groups go to one split so nothing leaks.

usage: synthetic_tasks.py OUT_DIR [--seed N] [--train N] [--eval N]
"""
import argparse
import os
import random


def majority(rng):
    while True:
        s = "".join(rng.choice("abcd") for _ in range(12))
        counts = sorted(((s.count(c), c) for c in "abcd"), reverse=True)
        if counts[0][0] > counts[1][0]:
            return s, counts[0][1]


def pairs(rng):
    s = "".join(rng.choice("abcdef") for _ in range(12))
    if rng.random() < 0.5 and "ab" not in s:
        i = rng.randrange(11)
        s = s[:i] + "ab" + s[i + 2:]
    return s, "yes" if "ab" in s else "no"


def shift(rng):
    s = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(4, 10)))
    return s, "".join(chr(ord(c) + 1) for c in s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--eval", type=int, default=200)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for k, (name, make) in enumerate([("majority", majority), ("pairs", pairs), ("shift", shift)]):
        rng = random.Random(args.seed * 1000 + k)
        path = os.path.join(args.out, name + ".tsv")
        with open(path, "w", encoding="utf-8") as f:
            for split, n in (("train", args.train), ("dev", args.eval), ("test", args.eval)):
                for i in range(n):
                    text, label = make(rng)
                    group = "%s-%d" % (split, i // 50)
                    f.write("%s\t%s\t%s\t%s\n" % (split, label, group, text))
        print(path)


if __name__ == "__main__":
    main()
