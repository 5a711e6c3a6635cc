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
from ispo.model.finetuned import Classifier
from ispo.model.load import DTYPES, RANDOM_WARNING, GeneformerModel
from ispo.provenance import cpu_info, device_name, h5ad_safe, versions
from ispo.runtime.batching import fixed_batches, pad_batch, token_budget_batches
from ispo.runtime.finite import FiniteCheck
from ispo.runtime.oom import OomSplitter
from ispo.runtime.pool import pool
from ispo.runtime.profiler import Profiler
from ispo.runtime.runner import Runner, Tokens, choose_layout, default_batch_tokens, to_device
from ispo.settings import Layout, Pool, Precision, RunSettings
from ispo.tokens import TokenizedCells, tokenize

log = logging.getLogger(__name__)

Method = Literal["fast", "baseline"]


def _autocast(device: torch.device, precision: Precision):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def embed_cells(
    cells: TokenizedCells,
    model: GeneformerModel,
    *,
    method: Method = "fast",
    precision: Precision | None = None,
    emb_layer: int = -1,
    pool_mode: Pool | str = "mean",
    batch_tokens: int | None = None,
    batch_size: int = 10,
    on_batch: Callable[[int], None] | None = None,
    net: torch.nn.Module | None = None,
    oom: OomSplitter | None = None,
    layout: Layout | str = "auto",
    probs_out: np.ndarray | None = None,
    finite: FiniteCheck | None = None,
) -> np.ndarray:
    """(n_cells, hidden) float32 embeddings of tokenized cells, in their order.

    ``on_batch(n_cells_done_in_batch)`` is called after each batch (progress bars). ``net``
    replaces the module the method would run (the model's encoder or reference model) by a
    variant with the same call convention: an int8-quantized or compiled copy (the benchmark).
    ``oom`` carries a reduced token budget across calls after an out-of-memory (streaming).
    ``layout`` (fast path): ``packed`` lays cells end to end with no padding (varlen flash
    attention on CUDA in half precision), ``padded`` pads each batch to its longest cell;
    ``auto`` follows :func:`ispo.runtime.runner.choose_layout` (the rule perturb uses too).
    ``precision`` defaults to the model's (as loaded: ``auto`` already resolved).
    ``probs_out`` (n_cells, classes), for a model with a cell classifier, is filled with each
    cell's class probabilities, read in the same encoder pass. A NaN or Inf result stops the
    call (:class:`~ispo.runtime.finite.NonFiniteError`) unless ``finite`` is a caller's own
    non-strict :class:`~ispo.runtime.finite.FiniteCheck`.
    """
    dev = model.device
    precision = precision or str(model.settings.precision)
    if probs_out is not None and model.classifier is None:
        raise ValueError("probs_out needs a model with a cell classifier")
    if method == "fast":
        n_run = model.layers_for(emb_layer)
        net = model.encoder(n_run, precision) if net is None else net
        tail = None if probs_out is None else model.tail(n_run, precision)
        layout = choose_layout(layout, dev, precision)
        runner = Runner(net, pad_id=model.config.pad_id, layout=layout, tail=tail)
        runner.finite = finite or runner.finite
        batches = token_budget_batches(cells.lengths, batch_tokens or default_batch_tokens(dev))

        def run(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
            enc = runner.encode(Tokens.from_cells(cells, idx, dev))
            return enc.pool(cells.has_cls, pool_mode), None if tail is None else enc.probs()

        # a batch that runs out of device memory is split and retried (ispo.runtime.oom)
        oom = OomSplitter(what="embed") if oom is None else oom
        cost = lambda j: len(j) * int(cells.lengths[j].max())
        step = lambda idx: oom.run(run, idx, cost)
        ctx, finite = nullcontext(), runner.finite
    elif method == "baseline":
        hf = model.hf_model() if net is None else net
        batches = fixed_batches(len(cells), batch_size)
        heads, finite = probs_out is not None, finite or FiniteCheck()

        def step(idx: np.ndarray) -> list[tuple[np.ndarray, tuple]]:
            pooled, probs = _baseline_batch(hf, cells, idx, model, emb_layer, pool_mode, heads)
            rows, dtype = cells.obs_index[idx], DTYPES[str(precision)]
            finite.add("embeddings", pooled, rows, dtype)
            if probs is not None:
                finite.add("probabilities", probs, rows, dtype)
            return [(idx, (pooled, probs))]

        ctx = _autocast(dev, precision)
    else:
        raise ValueError(f"unknown method {method!r}")
    outs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    with torch.inference_mode(), ctx:
        for idx in batches:
            outs.extend(got for _, got in step(idx))
            if on_batch is not None:
                on_batch(len(idx))
    finite.check()  # no NaN/Inf embedding or probability is returned (ispo.runtime.finite)
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    result = np.empty((len(cells), model.config.hidden), dtype=np.float32)
    if outs:
        result[order] = torch.cat([pooled for pooled, _ in outs]).cpu().numpy()
        if probs_out is not None:
            probs_out[order] = torch.cat([probs for _, probs in outs]).cpu().numpy()
    return result


def _baseline_batch(
    hf: torch.nn.Module,
    cells: TokenizedCells,
    idx: np.ndarray,
    model: GeneformerModel,
    emb_layer: int,
    pool_mode: Pool | str,
    probs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference way: padded ids with an attention mask through ``BertForMaskedLM``; the
    classifier's head (``probs``) reads the last hidden state's first token, as
    ``BertForSequenceClassification`` does."""
    ids, lens = pad_batch(cells, idx, model.config.pad_id)
    ids, lens = to_device(ids, model.device), to_device(lens, model.device)
    mask = (torch.arange(ids.shape[1], device=ids.device)[None] < lens[:, None]).long()
    out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hs = out.hidden_states
    pooled = pool(hs[model.layers_for(emb_layer)], lens, cells.has_cls, pool_mode)
    if not probs:
        return pooled, None
    return pooled, torch.softmax(model.classifier.head(hs[-1][:, 0].float()), dim=-1)


def probs_buffer(classifier: Classifier | None, n_cells: int) -> np.ndarray | None:
    """Where ``n_cells`` cells' class probabilities go (NaN until filled); None without a
    cell classifier."""
    if classifier is None:
        return None
    return np.full((n_cells, len(classifier.classes)), np.nan, dtype=np.float32)


def checked_vocab(
    model: GeneformerModel, vocab: Vocab | str | None, pool_mode: Pool | str = "mean"
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


def embedding_metadata(
    model: GeneformerModel,
    vocab: Vocab,
    s: RunSettings,
    method: Method,
    key_added: str,
    profile: dict,
) -> dict:
    """What ``uns["geneformer"]`` records of an embedding run, whichever path wrote it
    (:func:`embed`, and ``embed_file``): the model, the settings ``s`` it ran with
    (``precision`` as resolved, ``fast_settings`` for an encoder variant, ``precision_auto``
    when auto chose), the device and versions."""
    meta = {
        **model.metadata(),
        "vocab": vocab.source,
        "method": method,
        "precision": str(s.precision),
        "emb_layer": s.emb_layer,
        "pool": str(s.pool),
        "key_added": key_added,
        "device": device_name(model.device),
        "cpu": cpu_info(),
        "versions": versions(),
        "profile": profile,
    }
    if not s.is_plain():
        meta["fast_settings"] = s.variant()
    return meta


def embed(
    adata: ad.AnnData,
    model: GeneformerModel,
    *,
    vocab: Vocab | str | None = None,
    method: Method = "fast",
    precision: Precision | str | None = None,
    emb_layer: int | None = None,
    pool_mode: Pool | str | None = None,
    batch_tokens: int | None = None,
    batch_size: int = 10,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = "X_geneformer",
    progress: bool = False,
    settings: RunSettings | None = None,
) -> np.ndarray:
    """Embed every cell of ``adata``: fills ``obsm[key_added]`` and ``uns["geneformer"]``.

    Cells that were not embedded (``filter_pass == 0``, no vocabulary gene) get NaN rows and
    ``obs["geneformer_embedded"] == False``. A model with a cell classifier (a fine-tuned
    ``BertForSequenceClassification``) also fills ``obs["pred_class"]`` and
    ``obs["prob_<class>"]`` (:meth:`GeneformerModel.without_classifier` leaves them out).
    Returns the (n_obs, hidden) array. Speed and numerics come from ``settings`` (default: the
    model's, as loaded), with the keywords on top; ``precision="auto"`` is bf16 where the
    hardware has bf16 matrix units, else fp32.
    """
    settings = (settings or model.settings).replace(
        precision=precision, emb_layer=emb_layer, pool=pool_mode, batch_tokens=batch_tokens
    )
    model = model.with_settings(settings)  # the encoder variant; auto precision resolved
    s = model.settings
    vocab = checked_vocab(model, vocab, str(s.pool))
    # The same profiler as the benchmark's, so every run records comparable figures.
    with Profiler(device=model.device) as prof:
        t0 = time.perf_counter()
        cells = tokenize(
            adata, vocab, layer=layer, gene_key=gene_key, max_input=model.max_input(vocab)
        )
        t_tok = time.perf_counter() - t0
        probs = probs_buffer(model.classifier, len(cells))
        with tqdm(
            total=len(cells), unit="cell", disable=not progress, desc=f"embed ({method})"
        ) as bar:
            emb = embed_cells(
                cells,
                model,
                method=method,
                precision=str(s.precision),
                emb_layer=s.emb_layer,
                pool_mode=str(s.pool),
                batch_tokens=s.batch_tokens,
                batch_size=batch_size,
                on_batch=bar.update,
                layout=str(s.layout),
                probs_out=probs,
            )
        t_emb = time.perf_counter() - t0 - t_tok
    full = np.full((adata.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
    full[cells.obs_index] = emb
    done = np.zeros(adata.n_obs, dtype=bool)
    done[cells.obs_index] = True
    adata.obsm[key_added] = full
    adata.obs["geneformer_embedded"] = done
    if probs is not None:
        full_probs = np.full((adata.n_obs, probs.shape[1]), np.nan, dtype=np.float32)
        full_probs[cells.obs_index] = probs
        for col, values in model.classifier.cell_columns(full_probs).items():
            adata.obs[col] = values
    meta = embedding_metadata(model, vocab, s, method, key_added, prof.stats.to_dict())
    meta.update(n_cells_embedded=len(cells), seconds={"tokenize": t_tok, "embed": t_emb})
    adata.uns["geneformer"] = h5ad_safe(meta)
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return full
