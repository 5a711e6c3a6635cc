"""The fast Geneformer encoder: BERT without the MLM head, only the layers that are needed.

Reads like nanoGPT: embeddings, attention, block, encoder, in that order. Weights come from a
Hugging Face ``BertForMaskedLM`` state dict through an explicit name map (``from_hf_state_dict``),
with q/k/v fused into one matmul. Attention is PyTorch SDPA (flash / memory-efficient kernels
where the device has them). Batches are padded only to their own longest cell; with
length-sorted token-budget batches that padding is small, and a batch of equal lengths (all
perturbations of one cell) needs no mask at all. The packed layout (:class:`Packed`) lays a
batch's cells end to end with no padding at all: the linear layers see only real tokens, and
attention runs as variable-length flash attention on CUDA (half precision) or, elsewhere, as
padded SDPA on the attention step alone.

Dropout (the checkpoint's rates, BERT's places: embeddings, attention probabilities, each
sub-layer's output before its residual add) acts only in training mode (``ispo finetune``); in
eval mode, which the loader sets, every call is the same as without it, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from ispo.model.dropout import Dropout, dropout_attention
from ispo.model.presets import GeneformerConfig

# torch >= 2.10: flash attention over packed sequences (CUDA only). Imported on first use on a
# GPU (Packed.from_lengths): importing it pulls in torch._dynamo, ~2 s of every CPU start.
varlen_attn = None


def _load_varlen() -> None:
    global varlen_attn
    if varlen_attn is None:
        try:
            from torch.nn.attention.varlen import varlen_attn as fn
        except ImportError:  # pragma: no cover - older torch
            return
        varlen_attn = fn


@dataclass
class Packed:
    """Where each token of a packed batch belongs: the layout varlen attention wants."""

    lengths: torch.Tensor  # (B,) tokens per sequence
    cu_seqlens: torch.Tensor  # (B + 1,) int32 start offsets
    max_len: int
    seq_of: torch.Tensor  # (T,) sequence of each token
    pos: torch.Tensor  # (T,) position of each token in its sequence

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor) -> Packed:
        if lengths.is_cuda:
            _load_varlen()
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=lengths.device)
        cu[1:] = torch.cumsum(lengths, 0)
        seq_of = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        pos = torch.arange(len(seq_of), device=lengths.device) - cu[:-1].long()[seq_of]
        return cls(lengths, cu, int(lengths.max()), seq_of, pos)

    def uses_varlen(self, x: torch.Tensor) -> bool:
        return varlen_attn is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


@cache
def fused_bf16_linear_available() -> bool:
    """Whether oneDNN runs this CPU's bf16 linear layers as one call with their epilogue (bias,
    activation or residual add): CPUs with AVX512-BF16 or AMX, as torch's oneDNN reports them.

    Measured on an AVX-512-bf16 CPU: the feed-forward input layer with its ReLU 1.8x faster
    than ``addmm`` (which first copies the bias into the output) followed by a separate ReLU
    pass. The encoder variant holds the choice (``fuse_linear`` of each attention layer and
    block, set when it is built: :func:`ispo.model.variants.set_fused_linear`).
    """
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _fusable(x: torch.Tensor, lin: nn.Module) -> bool:
    """Whether the fused oneDNN call applies to this input: a bf16 CPU tensor through a plain
    ``nn.Linear`` (int8 and other variants keep their own forward), without autograd. Under
    ``torch.compile`` the plain ops are traced instead: inductor fuses them itself (and cannot
    trace the oneDNN op)."""
    return (
        x.dtype == torch.bfloat16
        and not x.is_cuda
        and type(lin) is nn.Linear
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


def dense(
    lin: nn.Module,
    x: torch.Tensor,
    act: str = "none",
    residual: torch.Tensor | None = None,
    *,
    fused: bool = False,
    drop: nn.Module | None = None,
) -> torch.Tensor:
    """``act(lin(x))``, or ``lin(x) + residual``; with ``fused`` (a bf16 CPU encoder built
    with fused linear layers), one oneDNN call with the epilogue where it applies. fp32 always
    keeps ``F.linear``, so its results stay bit-for-bit those of the reference path.

    ``drop``: dropout on ``lin(x)`` before the residual add, as BERT has it; only a module in
    training mode with a non-zero rate takes that path."""
    if drop is not None and drop.training and drop.p > 0:
        return drop(lin(x)) + residual
    if fused and _fusable(x, lin):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(
                x, residual, lin.weight, lin.bias, "add"
            )
        return torch.ops.mkldnn._linear_pointwise(x, lin.weight, lin.bias, act, [], "none")
    y = lin(x)
    return y + residual if residual is not None else _ACTS[act](y)


_ACTS = {"none": lambda y: y, "relu": F.relu, "gelu": F.gelu}


class Embeddings(nn.Module):
    def __init__(self, cfg: GeneformerConfig) -> None:
        super().__init__()
        # built on the meta device and filled by from_hf_state_dict: ``_weight`` skips the
        # random init, whose meta-device path imports torch._dynamo (~3 s of every start)
        self.word = nn.Embedding(
            cfg.vocab_size, cfg.hidden, _weight=torch.empty(cfg.vocab_size, cfg.hidden)
        )
        self.position = nn.Embedding(
            cfg.max_len, cfg.hidden, _weight=torch.empty(cfg.max_len, cfg.hidden)
        )
        self.token_type0 = nn.Parameter(torch.zeros(cfg.hidden))  # BERT adds type-0 everywhere
        self.ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = Dropout(cfg.hidden_dropout)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if pos is None:
            pos = torch.arange(ids.shape[-1], device=ids.device)
        x = self.word(ids) + self.position(pos) + self.token_type0  # (B, L, h) or (T, h)
        return self.drop(self.ln(x))


class Attention(nn.Module):
    def __init__(self, cfg: GeneformerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.p_attn = cfg.attention_dropout  # on the attention probabilities, in training
        self.drop = Dropout(cfg.hidden_dropout)
        # the SDPA kernels this layer may use, fixed when the encoder is built
        # (ispo.model.variants.set_attention); None lets PyTorch choose
        self.sdpa_backends: list | None = None
        # linear layers as fused oneDNN bf16 calls, fixed when the encoder is built
        # (ispo.model.variants.set_fused_linear)
        self.fuse_linear = False

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
        p = self.p_attn if self.training else 0.0
        if p > 0 and q.device.type == "cpu":  # SDPA's CPU dropout is its slow math path
            return dropout_attention(q, k, v, mask, p)
        if self.sdpa_backends is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self.sdpa_backends):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor | Packed | None, first_only: bool = False
    ) -> torch.Tensor:
        """``x + attention(x)``: the residual is added in the output projection's epilogue.
        ``first_only``: the first token's row alone, (B, 1, h) (padded layout only)."""
        if isinstance(ctx, Packed):
            return self._packed(x, ctx)
        if first_only:
            return self._first(x, ctx)
        B, L, h = x.shape
        qkv = dense(self.qkv, x, fused=self.fuse_linear).view(B, L, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = self._sdpa(q, k, v, ctx)  # (B, heads, L, hd)
        y = y.transpose(1, 2).reshape(B, L, h)
        return dense(self.out, y, residual=x, fused=self.fuse_linear, drop=self.drop)

    def _first(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The first token's query against every token's key and value: the one row of the
        last layer a sequence classifier reads, without the other rows' queries, scores and
        output projections."""
        B, L, h = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:h], b[:h]).view(B, 1, self.heads, h // self.heads)
        kv = F.linear(x, w[h:], b[h:]).view(B, L, 2, self.heads, h // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x (B, heads, L, hd)
        y = self._sdpa(q.transpose(1, 2), k, v, mask)  # (B, heads, 1, hd)
        y = y.transpose(1, 2).reshape(B, 1, h)
        return dense(self.out, y, residual=x[:, :1], fused=self.fuse_linear, drop=self.drop)

    def _packed(self, x: torch.Tensor, ctx: Packed) -> torch.Tensor:
        T, h = x.shape
        qkv = dense(self.qkv, x, fused=self.fuse_linear)
        qkv = qkv.view(T, 3, self.heads, h // self.heads)  # (T, 3, heads, hd)
        if ctx.uses_varlen(x):
            q, k, v = qkv.unbind(1)
            y = varlen_attn(q, k, v, ctx.cu_seqlens, ctx.cu_seqlens, ctx.max_len, ctx.max_len)
        else:  # pad for the attention step only
            B = len(ctx.lengths)
            buf = x.new_zeros(B, ctx.max_len, 3, self.heads, h // self.heads)
            buf[ctx.seq_of, ctx.pos] = qkv
            q, k, v = buf.permute(2, 0, 3, 1, 4)  # 3 x (B, heads, L, hd)
            keep = torch.arange(ctx.max_len, device=x.device)[None] < ctx.lengths[:, None]
            y = self._sdpa(q, k, v, keep[:, None, None, :])
            y = y.transpose(1, 2)[ctx.seq_of, ctx.pos]  # (T, heads, hd)
        return dense(self.out, y.reshape(T, h), residual=x, fused=self.fuse_linear, drop=self.drop)


class Block(nn.Module):
    """Post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: GeneformerConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.intermediate)
        self.ffn_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        # the checkpoint's own activation, relu or gelu (GeneformerConfig.from_hf refuses any
        # other); fused into the first FFN matmul where that pays (``dense``)
        self.act = cfg.hidden_act
        self.fuse_linear = False  # as Attention.fuse_linear
        self.drop = Dropout(cfg.hidden_dropout)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor | Packed | None, first_only: bool = False
    ) -> torch.Tensor:
        x = self.ln1(self.attn(x, ctx, first_only))  # the residual is added inside
        f = dense(self.ffn_in, x, self.act, fused=self.fuse_linear)
        f = dense(self.ffn_out, f, residual=x, fused=self.fuse_linear, drop=self.drop)
        return self.ln2(f)


def key_mask(ids: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """(B, 1, 1, L) True at the real tokens of padded ``ids`` (B, L); None without padding."""
    if lengths is None:
        return None
    pos = torch.arange(ids.shape[1], device=ids.device)
    return (pos[None, :] < lengths[:, None])[:, None, None, :]


class Encoder(nn.Module):
    """Embeddings plus the first ``n_run`` BERT layers; returns that layer's hidden states."""

    def __init__(self, cfg: GeneformerConfig, n_run: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(n_run))

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor | Packed | None = None
    ) -> torch.Tensor:
        """Hidden states of the run layers.

        Padded: ``ids`` (B, L) -> (B, L, h); ``lengths`` (B,) marks padding, None if there is
        none. Packed: ``ids`` (T,) of cells laid end to end, ``lengths`` a :class:`Packed`
        -> (T, h). One entry point, so ``torch.compile(encoder)`` compiles both layouts.
        """
        if isinstance(lengths, Packed):
            x = self.emb(ids, lengths.pos)
            ctx: torch.Tensor | Packed | None = lengths
        else:
            ctx = key_mask(ids, lengths)
            x = self.emb(ids)
        for block in self.blocks:
            x = block(x, ctx)
        return x

    def first_token(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h): each cell's first-token state after the last run layer, what a sequence
        classifier reads (``ids`` padded (B, L), ``lengths`` as in :meth:`forward`). That last
        layer runs for the first token alone; its keys and values still come from every token.
        """
        ctx = key_mask(ids, lengths)
        x = self.emb(ids)
        for block in self.blocks[:-1]:
            x = block(x, ctx)
        return self.blocks[-1](x, ctx, first_only=True)[:, 0]

    @classmethod
    def from_hf_state_dict(
        cls, cfg: GeneformerConfig, sd: dict[str, torch.Tensor], n_run: int
    ) -> Encoder:
        """Build on the meta device and assign checkpoint tensors by name (no copy, no init)."""
        with torch.device("meta"):
            model = cls(cfg, n_run)
        e = "bert.embeddings."
        new = {
            "emb.word.weight": sd[e + "word_embeddings.weight"],
            "emb.position.weight": sd[e + "position_embeddings.weight"],
            "emb.token_type0": sd[e + "token_type_embeddings.weight"][0],
            "emb.ln.weight": sd[e + "LayerNorm.weight"],
            "emb.ln.bias": sd[e + "LayerNorm.bias"],
        }
        for i in range(n_run):
            new.update({f"blocks.{i}.{k}": v for k, v in block_tensors(sd, i).items()})
        model.load_state_dict(new, strict=True, assign=True)
        return model.eval()

    def hf_state_dict(self, token_types: torch.Tensor) -> dict[str, torch.Tensor]:
        """These weights under ``BertModel``'s names (``bert.`` prefix), q/k/v split again: the
        inverse of :meth:`from_hf_state_dict`, for saving a checkpoint transformers loads.
        ``token_types`` is the checkpoint's token-type table; its row 0, the one BERT adds
        here, becomes this encoder's."""
        e, h = "bert.embeddings.", self.cfg.hidden
        types = token_types.detach().clone()
        types[0] = self.emb.token_type0.detach()
        out = {
            e + "word_embeddings.weight": self.emb.word.weight,
            e + "position_embeddings.weight": self.emb.position.weight,
            e + "token_type_embeddings.weight": types,
            e + "LayerNorm.weight": self.emb.ln.weight,
            e + "LayerNorm.bias": self.emb.ln.bias,
        }
        for i, b in enumerate(self.blocks):
            p = f"bert.encoder.layer.{i}."
            for kind in ("weight", "bias"):
                qkv = getattr(b.attn.qkv, kind)
                for j, n in enumerate(("query", "key", "value")):
                    out[p + f"attention.self.{n}.{kind}"] = qkv[j * h : (j + 1) * h]
                out[p + "attention.output.dense." + kind] = getattr(b.attn.out, kind)
                out[p + "attention.output.LayerNorm." + kind] = getattr(b.ln1, kind)
                out[p + "intermediate.dense." + kind] = getattr(b.ffn_in, kind)
                out[p + "output.dense." + kind] = getattr(b.ffn_out, kind)
                out[p + "output.LayerNorm." + kind] = getattr(b.ln2, kind)
        return {k: v.detach().clone() for k, v in out.items()}  # no shared storage


def block_tensors(sd: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Layer ``i`` of a Hugging Face state dict under :class:`Block`'s names (q/k/v fused)."""
    p, new = f"bert.encoder.layer.{i}.", {}
    for kind in ("weight", "bias"):
        new["attn.qkv." + kind] = torch.cat(
            [sd[p + f"attention.self.{n}.{kind}"] for n in ("query", "key", "value")]
        )
        new["attn.out." + kind] = sd[p + "attention.output.dense." + kind]
        new["ln1." + kind] = sd[p + "attention.output.LayerNorm." + kind]
        new["ffn_in." + kind] = sd[p + "intermediate.dense." + kind]
        new["ffn_out." + kind] = sd[p + "output.dense." + kind]
        new["ln2." + kind] = sd[p + "output.LayerNorm." + kind]
    return new
