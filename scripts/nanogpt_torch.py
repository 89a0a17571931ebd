"""nanogpt_torch.py — a second, independently written PyTorch GPT-2 for
scripts/bench_torch.py --model nanogpt: the model as a PyTorch user would
write it from the library's stock modules (nn.Linear, nn.LayerNorm,
nn.GELU, nn.Embedding, F.cross_entropy, torch.nn.utils.clip_grad_norm_,
torch.optim.AdamW), in the style of Karpathy's nanoGPT, with no code shared
with tests/pytorch/gpt2_ref.py.

It exists to check the reference of the performance issues: if
gpt2_ref.py's step were unusually fast or slow, the two would disagree.
Same architecture and work as `graft bench step --method full`: pre-LN
blocks, causal attention, GELU (tanh) MLP 4x, LM head tied to the token
embedding, next-token loss at every position, clipping at 1.0, AdamW
(lr 3e-4, no weight decay). Full fine-tuning only.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, C, NH, T):
        super().__init__()
        self.NH = NH
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(~self.mask[:T, :T], float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, C, NH, T):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = CausalSelfAttention(C, NH, T)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * C, C))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, V, T, L, NH, C):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, NH, T) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * L) if "c_proj" in name else 0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def make(cfg, lr=3e-4):
    """(model, step): step(inputs, targets) runs one training step and
    returns the loss."""
    model = NanoGPT(**cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def step(inputs, targets):
        opt.zero_grad(set_to_none=True)
        loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    return model, step
