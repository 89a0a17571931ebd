"""gpt2_ref.py — a PyTorch reference for graft's trunk, for cross-checks and benchmarks.

The model matches common/gpt2.c exactly:
  - token + learned position embeddings, L pre-LN blocks, final LayerNorm,
    LM head tied to the token embedding (logits = x @ wte^T, no bias);
  - LayerNorm with bias, eps 1e-5;
  - causal multi-head attention with softmax(q k^T / sqrt(hs));
  - GELU, tanh approximation, MLP 4x;
  - linear weights stored [in, out] as Hugging Face's Conv1D: y = x @ W + b;
  - loss: mean cross-entropy over targets >= 0 (targets < 0 are ignored).

Parameter names are the checkpoint's (Hugging Face GPT-2) names, so
model.named_parameters() lines up with graft's safetensors files one to one.

AdamW matches common/adamw.c: decoupled weight decay applied only to tensors
with ndim >= 2 (two parameter groups), bias-corrected moments, gradient
clipping by global L2 norm with scale clip / (norm + 1e-6) when norm > clip.

Also here: a tiny safetensors reader/writer in pure Python (json + numpy).

Run with Debian's interpreter: /usr/bin/python3 (python3-torch, python3-numpy).
"""

import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Presets, as graft_gpt2_preset() in common/gpt2.c (V = GRAFT_BYTE_VOCAB).
PRESETS = {
    "tiny": dict(V=260, T=32, L=2, NH=2, C=32),
    "small": dict(V=260, T=128, L=4, NH=4, C=192),
    "base": dict(V=260, T=256, L=6, NH=6, C=384),
}

# ---- safetensors ------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32,
           "I64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path):
    """Returns ({name: np.ndarray}, {metadata}) in header order. BF16 is widened to F32."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = data[b:e]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif info["dtype"] in _DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name}: {arr.size} values for shape {shape}")
        tensors[name] = arr.reshape(shape).copy()
    return tensors, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: array-like} (in dict order) atomically. Float tensors of
    any precision are written as F32 (graft reads F32/F16/BF16 only)."""
    header, chunks, off = {}, [], 0
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        raw = arr.tobytes()
        header[name] = {"dtype": _NAMES[np.dtype(arr.dtype.newbyteorder("="))],
                        "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * (-len(hj) % 8)  # keep the data section 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- model ------------------------------------------------------------------

class Conv1D(nn.Module):
    """Hugging Face GPT-2 linear layer: weight [in, out], y = x @ W + b;
    with add_lora() also + (alpha/r) (x A) B (parameters lora_A, lora_B)."""

    def __init__(self, nin, nout):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(nin, nout))
        self.bias = nn.Parameter(torch.zeros(nout))
        self.register_parameter("lora_A", None)
        self.register_parameter("lora_B", None)
        self.lora_scale = 0.0

    def add_lora(self, r, alpha, generator):
        """A ~ U(-1/sqrt(in), 1/sqrt(in)) [in, r], B = 0 [r, out], as common/peft.c."""
        nin, nout = self.weight.shape
        bound = 1.0 / math.sqrt(nin)
        self.lora_A = nn.Parameter((torch.rand(nin, r, generator=generator) * 2 - 1) * bound)
        self.lora_B = nn.Parameter(torch.zeros(r, nout))
        self.lora_scale = alpha / r

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.addmm(self.bias, x2, self.weight)
        if self.lora_A is not None:
            y = torch.addmm(y, x2 @ self.lora_A, self.lora_B, alpha=self.lora_scale)
        return y.view(*x.shape[:-1], self.weight.shape[1])


class LayerNorm(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, eps=1e-5)


class Attention(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.c_attn = Conv1D(C, 3 * C)
        self.c_proj = Conv1D(C, C)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        qkv = self.c_attn(x)
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """With add_red(): the output h becomes red_scale * h + red_bias."""

    def __init__(self, C):
        super().__init__()
        self.c_fc = Conv1D(C, 4 * C)
        self.c_proj = Conv1D(4 * C, C)
        self.register_parameter("red_scale", None)
        self.register_parameter("red_bias", None)

    def add_red(self):
        C = self.c_proj.weight.shape[1]
        self.red_scale = nn.Parameter(torch.ones(C))
        self.red_bias = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        h = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        if self.red_scale is not None:
            h = torch.addcmul(self.red_bias, h, self.red_scale)
        return h


class Adapter(nn.Module):
    """Residual bottleneck after a block, as common/peft.c: h + U relu(D LN(h) + d) + u;
    D ~ N(0, 1/sqrt(C)), U = 0."""

    def __init__(self, C, m, generator):
        super().__init__()
        self.ln = LayerNorm(C)
        self.down = Conv1D(C, m)
        self.up = Conv1D(m, C)
        with torch.no_grad():
            self.down.weight.copy_(torch.randn(C, m, generator=generator) / math.sqrt(C))

    def forward(self, h):
        return h + self.up(F.relu(self.down(self.ln(h))))


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.ln_1 = LayerNorm(C)
        self.attn = Attention(C, NH)
        self.ln_2 = LayerNorm(C)
        self.mlp = MLP(C)
        self.adapter = None

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x if self.adapter is None else self.adapter(x)


class GPT2(nn.Module):
    """named_parameters() yields graft's checkpoint names: wte.weight,
    wpe.weight, h.{i}.ln_1.weight, h.{i}.attn.c_attn.weight, ..., ln_f.bias."""

    def __init__(self, V, T, L, NH, C):
        super().__init__()
        assert C % NH == 0
        self.cfg = dict(V=V, T=T, L=L, NH=NH, C=C)
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, NH) for _ in range(L)])
        self.ln_f = LayerNorm(C)

    def init_weights(self, seed=0):
        """GPT-2 style initialisation like graft_gpt2_new (not bit-identical:
        graft uses its own RNG). Biases zero, LayerNorm weights one."""
        g = torch.Generator().manual_seed(seed)
        L = self.cfg["L"]
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.ndim < 2:
                    p.fill_(1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                            or name == "ln_f.weight" else 0.0)
                    continue
                std = 0.01 if name == "wpe.weight" else 0.02
                if name.endswith("c_proj.weight"):
                    std = 0.02 / math.sqrt(2 * L)
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
        return self

    def forward(self, idx, targets=None):
        """idx (B,T) int64. Returns (logits (B,T,V), mean loss or None)."""
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)[None]
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = x @ self.wte.weight.t()
        if targets is None:
            return logits, None
        return logits, lm_loss(logits, targets)

    def load_state(self, tensors):
        """Copies {name: array} (from read_safetensors) into the parameters;
        an optional 'transformer.' prefix is accepted, every parameter must
        be present with its shape."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                arr = tensors.get(name, tensors.get("transformer." + name))
                if arr is None:
                    raise KeyError(f"missing tensor {name}")
                if tuple(arr.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(arr.shape)}, want {tuple(p.shape)}")
                p.copy_(torch.from_numpy(np.asarray(arr)).to(p.dtype))
        return self


def lm_loss(logits, targets):
    """Mean cross-entropy over targets >= 0 (every negative target ignored);
    0 (with a gradient of 0) when no target counts, as crossentropy_forward."""
    V = logits.shape[-1]
    t = targets.reshape(-1).clone()
    t[t < 0] = -1
    if (t >= 0).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, V), t, ignore_index=-1)


def model_from_safetensors(path, dtype=torch.float32):
    """Builds the model a graft checkpoint describes (metadata config.*)."""
    tensors, meta = read_safetensors(path)
    cfg = {k: int(meta["config." + k]) for k in ("V", "T", "L", "NH", "C")}
    model = GPT2(**cfg).to(dtype)
    model.load_state(tensors)
    return model, tensors, meta


# ---- optimiser --------------------------------------------------------------

def adamw_defaults():
    """graft_adamw_defaults() in common/adamw.c."""
    return dict(lr=3e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0)


def make_adamw(params, lr, beta1, beta2, eps, weight_decay):
    """AdamW with graft's decay classes: decay on tensors with ndim >= 2,
    none on vectors. `params` is an iterable of parameters (e.g. only the
    trainable ones)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)


def clip_grads(params, grad_clip):
    """Global-norm clipping as graft_grad_sumsq + graft_clip_scale: the sum
    of squares in double, scale = clip / (norm + 1e-6) only when norm > clip
    (clip <= 0 disables). Scales .grad in place; returns (norm, scale)."""
    grads = [p.grad for p in params if p.grad is not None]
    sumsq = sum(float(g.double().pow(2).sum()) for g in grads)
    norm = math.sqrt(sumsq)
    scale = 1.0
    if grad_clip > 0 and norm > grad_clip:
        scale = grad_clip / (norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm, scale


def train_step(model, opt, inputs, targets, grad_clip):
    """Forward, backward, clipping and one AdamW step. Returns (loss, norm, scale)."""
    opt.zero_grad(set_to_none=False)
    _, loss = model(inputs, targets)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    norm, scale = clip_grads(params, grad_clip)
    opt.step()
    return float(loss), norm, scale


# ---- PEFT methods (for the benchmark) ---------------------------------------

METHODS = ("full", "lora", "adapter", "red")


def prepare_method(model, method, lora_rank=8, lora_alpha=16.0, adapter_dim=16, seed=0):
    """Marks what `method` trains and returns the trainable parameters.

    full: every trunk parameter.
    lora: one shared LoRA pair of rank lora_rank (A [in, r] uniform in
      +-1/sqrt(in), B [r, out] zero, scale alpha/r) on each block's
      attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj: y = x W + b +
      (x A) B * s. The trunk is frozen (requires_grad False), so autograd
      computes no trunk weight gradient and stops where nothing below needs
      a gradient (block 0's input). Returns the 2 * 4 * L LoRA tensors.
    adapter: a residual bottleneck (width adapter_dim) after every block,
      h + U relu(D LN(h) + d) + u, U = 0; trunk frozen.
    red: per-block scale and bias on the MLP output, h <- s * h + b
      (s = 1, b = 0); trunk frozen.
    These are graft's modules (common/peft.c) with the same initial values
    up to the random draws; graft's `graft bench step --method M` trains
    the same tensors.
    """
    if method not in METHODS:
        raise ValueError(f"method '{method}' is not supported by the PyTorch reference "
                         f"(supported: {', '.join(METHODS)})")
    trunk = list(model.parameters())
    for p in trunk:
        p.requires_grad_(method == "full")
    if method == "full":
        return trunk
    g = torch.Generator().manual_seed(seed)
    C = model.cfg["C"]
    for block in model.h:
        if method == "lora":
            for proj in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                proj.add_lora(lora_rank, lora_alpha, g)
        elif method == "adapter":
            block.adapter = Adapter(C, adapter_dim, g)
        else:
            block.mlp.add_red()
    frozen = {id(p) for p in trunk}
    return [p for p in model.parameters() if id(p) not in frozen]
