"""Cell embeddings by two paths behind one interface.

``baseline`` is the usual way, kept as the reference: Hugging Face ``BertForMaskedLM`` with its
MLM head, fp32 (or autocast), fixed-size padded batches in input order,
``output_hidden_states=True``. ``fast`` is ours: the encoder only up to the needed layer,
length-sorted token-budget batches, SDPA, the chosen precision, ``inference_mode``, pinned async
copies on CUDA. Both return float32 embeddings in the input order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal

import anndata as ad
import numpy as np
import torch
from tqdm.auto import tqdm

from ispo.errors import IspoError
from ispo.io.vocab import Vocab, load_vocab
from ispo.model.encoder import Packed
from ispo.model.load import DTYPES, RANDOM_WARNING, GeneformerModel, Precision
from ispo.provenance import cpu_info, device_name, h5ad_safe, versions
from ispo.runtime.batching import fixed_batches, pad_batch, token_budget_batches
from ispo.runtime.oom import OomSplitter
from ispo.runtime.pool import PoolMode, pool, pool_packed
from ispo.runtime.profiler import Profiler
from ispo.tokens import TokenizedCells, tokenize

log = logging.getLogger(__name__)

Method = Literal["fast", "baseline"]
Layout = Literal["auto", "padded", "packed"]


def default_batch_tokens(device: torch.device) -> int:
    """A token budget that keeps the device busy without risking memory."""
    return 131_072 if device.type == "cuda" else 16_384


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy; pinned and asynchronous on CUDA so it overlaps compute."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _autocast(device: torch.device, precision: Precision):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def embed_cells(
    cells: TokenizedCells,
    model: GeneformerModel,
    *,
    method: Method = "fast",
    precision: Precision = "fp32",
    emb_layer: int = -1,
    pool_mode: PoolMode = "mean",
    batch_tokens: int | None = None,
    batch_size: int = 10,
    on_batch: Callable[[int], None] | None = None,
    net: torch.nn.Module | None = None,
    oom: OomSplitter | None = None,
    layout: Layout = "auto",
) -> np.ndarray:
    """(n_cells, hidden) float32 embeddings of tokenized cells, in their order.

    ``on_batch(n_cells_done_in_batch)`` is called after each batch (progress bars). ``net``
    replaces the module the method would run (the model's encoder or reference model) by a
    variant with the same call convention: an int8-quantized or compiled copy (the benchmark).
    ``oom`` carries a reduced token budget across calls after an out-of-memory (streaming).
    ``layout`` (fast path): ``packed`` lays cells end to end with no padding (varlen flash
    attention on CUDA in half precision), ``padded`` pads each batch to its longest cell;
    ``auto`` is packed on CUDA, padded elsewhere (where packing only adds scatter work).
    """
    dev = model.device
    n_run = model.layers_for(emb_layer)
    pad_id = model.config.pad_id
    if method == "fast":
        net = model.encoder(n_run, precision) if net is None else net
        batches = token_budget_batches(cells.lengths, batch_tokens or default_batch_tokens(dev))
        ctx = nullcontext()
    elif method == "baseline":
        net = model.hf_model() if net is None else net
        batches = fixed_batches(len(cells), batch_size)
        ctx = _autocast(dev, precision)
    else:
        raise ValueError(f"unknown method {method!r}")
    outs: list[torch.Tensor] = []

    packed = method == "fast" and (layout == "packed" or (layout == "auto" and dev.type == "cuda"))

    def run(idx: np.ndarray) -> torch.Tensor:
        if packed:
            sub = cells.subset(idx)
            ids = to_device(torch.from_numpy(sub.tokens.astype(np.int64)), dev)
            ctx = Packed.from_lengths(to_device(torch.from_numpy(sub.lengths), dev))
            return pool_packed(net(ids, ctx), ctx, cells.has_cls, pool_mode)
        ids, lens = pad_batch(cells, idx, pad_id)
        ids, lens = to_device(ids, dev), to_device(lens, dev)
        if method == "fast":
            uniform = bool(cells.lengths[idx].min() == cells.lengths[idx].max())
            hidden = net(ids, None if uniform else lens)
        else:
            mask = (torch.arange(ids.shape[1], device=dev)[None] < lens[:, None]).long()
            hidden = net(
                input_ids=ids, attention_mask=mask, output_hidden_states=True
            ).hidden_states[n_run]
        return pool(hidden, lens, cells.has_cls, pool_mode)

    # fast path: a batch that runs out of device memory is split and retried (ispo.runtime.oom)
    oom = OomSplitter(what="embed") if oom is None else oom
    cost = lambda j: len(j) * int(cells.lengths[j].max())
    with torch.inference_mode(), ctx:
        for idx in batches:
            parts = oom.run(run, idx, cost) if method == "fast" else [(idx, run(idx))]
            outs.extend(pooled for _, pooled in parts)
            if on_batch is not None:
                on_batch(len(idx))
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    result = np.empty((len(cells), model.config.hidden), dtype=np.float32)
    if outs:
        result[order] = torch.cat(outs).cpu().numpy()
    return result


def checked_vocab(
    model: GeneformerModel, vocab: Vocab | str | None, pool_mode: PoolMode = "mean"
) -> Vocab:
    """The vocabulary a run uses (``vocab``, else the model's), checked against the model and
    the pooling: one place for the errors every entry point (embed, stream, perturb) gives."""
    vocab = load_vocab(vocab) if vocab is not None else model.vocab
    if vocab is None:
        raise IspoError("no vocabulary: pass vocab= (--vocab DIR) with the model's dictionaries")
    model.check_vocab(vocab)
    if pool_mode == "cls" and vocab.version != 2:
        raise IspoError("pool 'cls' needs a V2 vocabulary (with <cls>); use pool 'mean' for V1")
    return vocab


def embed(
    adata: ad.AnnData,
    model: GeneformerModel,
    *,
    vocab: Vocab | str | None = None,
    method: Method = "fast",
    precision: Precision = "fp32",
    emb_layer: int = -1,
    pool_mode: PoolMode = "mean",
    batch_tokens: int | None = None,
    batch_size: int = 10,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = "X_geneformer",
    progress: bool = False,
) -> np.ndarray:
    """Embed every cell of ``adata``: fills ``obsm[key_added]`` and ``uns["geneformer"]``.

    Cells that were not embedded (``filter_pass == 0``, no vocabulary gene) get NaN rows and
    ``obs["geneformer_embedded"] == False``. Returns the (n_obs, hidden) array.
    """
    vocab = checked_vocab(model, vocab, pool_mode)
    # The same profiler as the benchmark's, so every run records comparable figures.
    with Profiler(device=model.device) as prof:
        t0 = time.perf_counter()
        cells = tokenize(
            adata,
            vocab,
            layer=layer,
            gene_key=gene_key,
            max_input=min(vocab.max_input, model.config.max_len),
        )
        t_tok = time.perf_counter() - t0
        with tqdm(
            total=len(cells), unit="cell", disable=not progress, desc=f"embed ({method})"
        ) as bar:
            emb = embed_cells(
                cells,
                model,
                method=method,
                precision=precision,
                emb_layer=emb_layer,
                pool_mode=pool_mode,
                batch_tokens=batch_tokens,
                batch_size=batch_size,
                on_batch=bar.update,
            )
        t_emb = time.perf_counter() - t0 - t_tok
    full = np.full((adata.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
    full[cells.obs_index] = emb
    done = np.zeros(adata.n_obs, dtype=bool)
    done[cells.obs_index] = True
    adata.obsm[key_added] = full
    adata.obs["geneformer_embedded"] = done
    adata.uns["geneformer"] = h5ad_safe(
        {
            **model.metadata(),
            "vocab": vocab.source,
            "method": method,
            "precision": precision,
            "emb_layer": emb_layer,
            "pool": pool_mode,
            "key_added": key_added,
            "n_cells_embedded": len(cells),
            "device": device_name(model.device),
            "cpu": cpu_info(),
            "seconds": {"tokenize": t_tok, "embed": t_emb},
            "versions": versions(),
            "profile": prof.stats.to_dict(),
        }
    )
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return full
