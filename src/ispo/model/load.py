"""Loading a Geneformer model: a local Hugging Face checkpoint, or a preset with random weights.

Weights are read once into a Hugging Face-named state dict; the fast encoder and the reference
``BertForMaskedLM`` are both built from it on demand, so the two paths always hold the same
numbers. Only a Hugging Face hub name may touch the network, through ``huggingface_hub``
(:mod:`ispo.io.hub`; none with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ispo import faults
from ispo.errors import IspoError
from ispo.io import hub
from ispo.io.hub import HubFolder
from ispo.io.vocab import Vocab, load_vocab
from ispo.model import variants
from ispo.model.finetuned import Classifier, read_classifier
from ispo.model.presets import PRESETS, GeneformerConfig, preset
from ispo.model.tail import ClassifierTail
from ispo.model.variants import DTYPES
from ispo.settings import RunSettings

log = logging.getLogger(__name__)
__all__ = ["DTYPES", "GeneformerModel", "load_model", "resolve_device"]
POSITIONS = "bert.embeddings.position_embeddings.weight"
INIT_STD = 0.02  # BertConfig.initializer_range, the init of random-weight presets
RANDOM_WARNING = (
    "RANDOM WEIGHTS: model {name!r} was built with seeded random weights "
    "(seed {seed}); fine for speed work, meaningless for biology"
)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` means the GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IspoError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return dev


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names with the ``bert.`` prefix and ``weight``/``bias`` LayerNorm names;
    classification heads (``classifier.*``, Geneformer's multi-task ``classification_heads.*``)
    keep their own names."""
    out = {}
    for k, v in sd.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        if not k.startswith(("bert.", "cls.", "classifier.", "classification_heads.")):
            k = "bert." + k
        out[k] = v
    return out


def _read_checkpoint(root: Path) -> tuple[GeneformerConfig, dict[str, torch.Tensor]]:
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise IspoError(
            f"checkpoint directory {root} has no config.json: point --model at a "
            "Hugging Face model directory or use a preset name"
        )
    try:
        cfg = GeneformerConfig.from_hf(json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as exc:
        raise IspoError(f"{cfg_path} is not valid JSON: restore the checkpoint's config") from exc
    st, binf = root / "model.safetensors", root / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            sd = load_file(str(st))
        elif binf.is_file():
            sd = torch.load(binf, map_location="cpu", mmap=True, weights_only=True)
        else:
            raise IspoError(
                f"checkpoint directory {root} has no weights (model.safetensors or "
                "pytorch_model.bin): copy them there, or use a preset with "
                "--random-init"
            )
    except IspoError:
        raise
    except Exception as exc:
        raise IspoError(
            f"cannot read the weights in {root} ({type(exc).__name__}): the file is "
            "damaged or not a PyTorch checkpoint"
        ) from exc
    sd = _normalise_keys(sd)
    need = ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.dense.weight"]
    if any(k not in sd for k in need):
        raise IspoError(
            f"weights in {root} are not a BERT/Geneformer state dict (no "
            f"{need[0]}): check the checkpoint"
        )
    check_finite_weights(sd, root)
    emb = sd[need[0]]
    if tuple(emb.shape) != (cfg.vocab_size, cfg.hidden):
        raise IspoError(
            f"weights in {root} have embeddings {tuple(emb.shape)} but config.json "
            f"says ({cfg.vocab_size}, {cfg.hidden}): config and weights disagree"
        )
    return cfg, sd


def check_finite_weights(sd: dict[str, torch.Tensor], root: Path) -> None:
    """Refuse a checkpoint with a NaN or Inf in any weight: it would embed every cell as NaN
    without an error. One ``isfinite`` reduction per tensor (well under a second for the
    largest Geneformer)."""
    for name, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise IspoError(
                f"weight {name} of the checkpoint in {root} holds {n_bad:,} NaN/Inf "
                "value(s): the checkpoint is damaged; download or copy it again"
            )


def _random_state_dict(cfg: GeneformerConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights under ``BertForMaskedLM``'s names, with BERT's init (normal(0,
    0.02) weights, zero biases and padding row, unit LayerNorms; decoder tied to the word
    embeddings). Built here rather than by instantiating the Hugging Face model: importing
    it costs ~5 s of every start, and the fast path never needs it."""
    gen = torch.Generator().manual_seed(seed)
    h, i = cfg.hidden, cfg.intermediate

    def normal(*shape: int) -> torch.Tensor:
        return torch.empty(shape).normal_(0.0, INIT_STD, generator=gen)

    def linear(name: str, n_out: int, n_in: int) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": normal(n_out, n_in), f"{name}.bias": torch.zeros(n_out)}

    def layer_norm(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": torch.ones(h), f"{name}.bias": torch.zeros(h)}

    word = normal(cfg.vocab_size, h)
    word[cfg.pad_id] = 0.0
    e = "bert.embeddings."
    sd = {
        e + "word_embeddings.weight": word,
        POSITIONS: normal(cfg.max_len, h),
        e + "token_type_embeddings.weight": normal(cfg.type_vocab_size, h),
        **layer_norm(e + "LayerNorm"),
    }
    for n in range(cfg.n_layers):
        p = f"bert.encoder.layer.{n}."
        for qkv in ("query", "key", "value"):
            sd.update(linear(p + "attention.self." + qkv, h, h))
        sd.update(linear(p + "attention.output.dense", h, h))
        sd.update(layer_norm(p + "attention.output.LayerNorm"))
        sd.update(linear(p + "intermediate.dense", i, h))
        sd.update(linear(p + "output.dense", h, i))
        sd.update(layer_norm(p + "output.LayerNorm"))
    head_bias = torch.zeros(cfg.vocab_size)
    sd.update(linear("cls.predictions.transform.dense", h, h))
    sd.update(layer_norm("cls.predictions.transform.LayerNorm"))
    sd.update(
        {
            "cls.predictions.bias": head_bias,
            "cls.predictions.decoder.weight": word,
            "cls.predictions.decoder.bias": head_bias,
        }
    )
    return sd


@dataclass
class GeneformerModel:
    """A loaded Geneformer: its architecture, weights, provenance and run settings.

    ``encoder()`` gives the fast encoder truncated to the needed layers, built once per
    (layers, settings) with the variants of ``settings`` (precision, attention kernel, int8,
    compile: :mod:`ispo.model.variants`); ``hf_model()`` the reference Hugging Face model.
    ``precision_note`` says what ``precision="auto"`` chose and why (None when not asked).
    ``classifier`` is a fine-tuned cell classifier's head and class names (None for a model
    without one, or with class probabilities turned off: :meth:`without_classifier`).
    """

    config: GeneformerConfig
    state_dict: dict[str, torch.Tensor]
    name: str
    random_init: bool
    seed: int | None
    device: torch.device
    vocab: Vocab | None = None
    settings: RunSettings = field(default_factory=RunSettings)
    precision_note: str | None = None
    classifier: Classifier | None = None
    hub: dict | None = None  # the Hugging Face hub folder and commit it came from
    _cache: dict = field(default_factory=dict, repr=False)

    def layers_for(self, emb_layer: int) -> int:
        """Encoder layers to run for Geneformer's ``emb_layer`` (-1: penultimate, 0: last)."""
        if emb_layer not in (-1, 0):
            raise IspoError(f"emb_layer must be -1 (penultimate) or 0 (last), not {emb_layer}")
        return self.config.n_layers + emb_layer

    def max_input(self, vocab: Vocab | None = None) -> int:
        """Longest cell the tokenizer may give this model: the vocabulary's input size, capped
        by the model's position table."""
        vocab = self.vocab if vocab is None else vocab
        if vocab is None:
            return self.config.max_len
        return min(vocab.max_input, self.config.max_len)

    def with_settings(self, settings: RunSettings, *, own_cache: bool = False) -> GeneformerModel:
        """This model (same weights) with other run settings; ``auto`` precision is resolved.

        The encoders it builds go to the shared cache, or, with ``own_cache``, to a cache of
        its own that is dropped with it (one ``ispo tune`` trial).
        """
        resolved, note = variants.resolve(settings, self.device)
        if note is not None:
            log.info("precision auto -> %s", note)
        elif resolved.precision == self.settings.precision:
            note = self.precision_note  # chosen by auto at load, still the same
        cache = {} if own_cache else self._cache
        return replace(self, settings=resolved, precision_note=note, _cache=cache)

    def encoder(
        self, n_run: int | None = None, settings: RunSettings | str | None = None
    ) -> nn.Module:
        """The fast encoder for ``n_run`` layers (default all) with ``settings`` (default the
        model's; a precision name means the model's settings in that precision), built once."""
        return self.built_encoder(n_run, settings).net

    def built_encoder(
        self, n_run: int | None = None, settings: RunSettings | str | None = None
    ) -> variants.Built:
        """:meth:`encoder` with its description (what ran, for logs and benchmark rows)."""
        n_run = self.config.n_layers if n_run is None else n_run
        settings = self._settings(settings)
        key = ("fast", n_run, settings.encoder_key())
        if key not in self._cache:
            self._cache[key] = variants.build_encoder(
                self.config, self.state_dict, n_run, settings, self.device
            )
            log.debug("built %s", self._cache[key].description)
        return self._cache[key]

    def _settings(self, settings: RunSettings | str | None) -> RunSettings:
        """``settings`` resolved (default the model's; a precision name: the model's settings
        in that precision)."""
        if settings is None:
            settings = self.settings
        elif not isinstance(settings, RunSettings):
            settings = self.settings.replace(precision=settings)
        return variants.resolve(settings, self.device)[0]

    def tail(self, n_run: int, settings: RunSettings | str | None = None) -> ClassifierTail | None:
        """What the classifier reads after an encoder of ``n_run`` layers (the last layer for
        the first token, then the head; :mod:`ispo.model.tail`), built once per (layers,
        precision); None without a classifier: a run then costs nothing more."""
        if self.classifier is None:
            return None
        precision = str(self._settings(settings).precision)
        key = ("tail", n_run, precision)
        if key not in self._cache:
            self._cache[key] = ClassifierTail.build(
                self.config, self.state_dict, n_run, self.classifier.head, DTYPES[precision]
            )
        return self._cache[key]

    def with_max_input(self, max_len: int) -> GeneformerModel:
        """This model reading at most ``max_len`` tokens per cell, as a smaller Geneformer
        ``model_input_size`` would: its position table cut to the first ``max_len`` rows (the
        only ones such cells reach). A new model with its own encoder cache, not a change to
        this one."""
        if max_len > self.config.max_len:
            raise IspoError(
                f"max input {max_len:,} exceeds the model's {self.config.max_len:,} positions: "
                f"give at most {self.config.max_len:,}"
            )
        sd = {**self.state_dict, POSITIONS: self.state_dict[POSITIONS][:max_len].clone()}
        cfg = replace(self.config, max_len=max_len)
        return replace(self, config=cfg, state_dict=sd, _cache={})

    def without_classifier(self) -> GeneformerModel:
        """This model with no class probabilities (``--no-probs``): runs stop at the pooled
        layer, as for a model without a classifier."""
        return replace(self, classifier=None)

    def hf_model(self):
        """The reference ``BertForMaskedLM`` (fp32, eval mode) with these weights."""
        if "hf" not in self._cache:
            from transformers import BertForMaskedLM

            model = BertForMaskedLM(self.config.to_hf())
            # Checkpoints without an MLM head (e.g. a saved BertModel) still load: the head is
            # not needed for embeddings, so it keeps its fresh init instead of being refused.
            result = model.load_state_dict(self.state_dict, strict=False)
            if result.missing_keys:
                log.info(
                    "reference model: %d tensors not in the checkpoint (MLM head?)",
                    len(result.missing_keys),
                )
            self._cache["hf"] = model.to(self.device).eval()
        return self._cache["hf"]

    def check_vocab(self, vocab: Vocab) -> None:
        """Refuse a vocabulary that does not fit this model.

        Token ids index the embedding table, so the sizes must agree; V1 and V2 dictionaries
        (and their special tokens) differ in size, so this also catches a V1/V2 mix-up.
        """
        if vocab.size != self.config.vocab_size:
            raise IspoError(
                f"vocabulary {vocab.source} has {vocab.size:,} tokens but model {self.name} "
                f"expects {self.config.vocab_size:,}: use the dictionaries released with the model"
            )

    def metadata(self) -> dict:
        """Provenance recorded with every output."""
        meta = {
            "model": self.name,
            "random_init": self.random_init,
            "seed": self.seed,
            "architecture": self.config.to_dict(),
            "vocab": None if self.vocab is None else self.vocab.source,
        }
        if self.precision_note is not None:
            meta["precision_auto"] = self.precision_note
        if self.classifier is not None:
            meta["classes"] = list(self.classifier.classes)
        if self.hub is not None:
            meta["hub"] = self.hub
        fault = faults.describe()
        if fault is not None:  # a drill, not a real run: its outputs say so
            meta["ispo_fault"] = fault
        return meta


def checkpoint_folder(source: str | Path) -> tuple[Path, HubFolder | None]:
    """Where the checkpoint ``source`` names lies: itself (a local folder, or a preset name),
    or, for a Hugging Face hub name that is neither, the folder in the hub's cache it resolves
    to (:mod:`ispo.io.hub`), with what was resolved."""
    path = Path(source)
    if path.exists() or str(source) in PRESETS:
        return path, None
    name = hub.parse(str(source))
    if name is None and len(path.parts) > 1:
        raise IspoError(
            f"--model {path} does not exist: give a checkpoint directory (config.json and "
            "weights), a Hugging Face hub folder such as ctheodoris/Geneformer/Geneformer-V1-10M, "
            "or a preset name"
        )
    if name is None:
        return path, None
    folder = hub.model_folder(name)
    return folder.path, folder


def load_model(
    source: str | Path,
    *,
    vocab: str | Path | Vocab | None = None,
    device: str | torch.device = "auto",
    random_init: bool = False,
    seed: int = 0,
    settings: RunSettings | None = None,
) -> GeneformerModel:
    """Load a Geneformer from a checkpoint directory (local, or a Hugging Face hub folder
    such as ``ctheodoris/Geneformer/Geneformer-V1-10M[@revision]``), or a preset name.

    A preset has no weights offline: it is only built, with seeded random weights, when
    ``random_init=True``, and that is logged loudly and recorded in every output's metadata.
    ``settings`` are the run's (default: plain fp32); ``precision="auto"`` is resolved here,
    once, for the device, and the choice is logged and recorded in the metadata.
    """
    faults.announce()  # a stray ISPO_FAULT: refused or announced before anything loads
    dev = resolve_device(device)
    path, hub_folder = checkpoint_folder(source)
    if path.is_dir():
        cfg, sd = _read_checkpoint(path)
        name = str(path) if hub_folder is None else hub_folder.pinned()
        model = GeneformerModel(cfg, sd, name, False, None, dev)
        model.hub = None if hub_folder is None else hub_folder.metadata()
        classifier = read_classifier(path, sd)  # a fine-tuned cell classifier's head
        model.classifier = None if classifier is None else classifier.to(dev)
    elif path.exists():
        raise IspoError(
            f"--model {path} is a file: give the checkpoint directory that holds "
            "config.json and the weights"
        )
    else:
        cfg = preset(str(source))
        if not random_init:
            raise IspoError(
                f"{source!r} is a preset without weights: pass a checkpoint "
                "directory, or --random-init (random_init=True) for speed work"
            )
        log.warning(RANDOM_WARNING.format(name=str(source), seed=seed))
        model = GeneformerModel(cfg, _random_state_dict(cfg, seed), str(source), True, seed, dev)
    if vocab is not None:
        model.vocab = load_vocab(vocab)
        model.check_vocab(model.vocab)
    return model if settings is None else model.with_settings(settings)
