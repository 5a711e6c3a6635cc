"""The fast path's speed settings as one plain-data object, and how to apply them.

A :class:`FastSettings` is what ``ispo tune`` searches over and what its ``best.yaml`` records:
the token budget per batch, the precision, the SDPA attention backend, ``torch.compile`` and
int8 linear layers. Each is one visible switch that can be turned off to compare.

:func:`prepare_encoder` builds the module a setting runs (int8 from :mod:`ispo.model.int8`,
``torch.compile`` as the benchmark does); :func:`attention_backend` restricts SDPA to one kernel;
:func:`fast_path` applies a whole setting to a loaded model for the duration of a block, so
``ispo.embed`` and ``ispo perturb`` run with it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ispo.errors import IspoError
from ispo.model.load import DTYPES, GeneformerModel

log = logging.getLogger(__name__)

#: Attention backend names -> ``torch.nn.attention.SDPBackend`` member names ("default": let
#: PyTorch choose, no restriction).
ATTENTION_BACKENDS = {
    "default": None,
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class FastSettings:
    """Speed settings of the fast path (every one can be switched off to compare).

    Attributes
    ----------
    batch_tokens
        Token budget per batch (cells x longest cell); None: the device default.
    precision
        ``fp32``, ``fp16`` or ``bf16`` weights and activations (int8 runs fp32 around its
        int8 matmuls).
    attention
        SDPA kernel: ``default`` (PyTorch picks), ``math``, ``flash``, ``efficient``, ``cudnn``.
    compile
        Wrap the encoder in ``torch.compile(dynamic=True)``.
    int8
        Every linear layer computed in int8 (:func:`ispo.model.int8.quantize_int8`).
    """

    batch_tokens: int | None = None
    precision: str = "fp32"
    attention: str = "default"
    compile: bool = False
    int8: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise IspoError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.attention not in ATTENTION_BACKENDS:
            raise IspoError(
                f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, not {self.attention!r}"
            )
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise IspoError(f"batch_tokens must be positive, not {self.batch_tokens}")
        if self.int8 and self.precision != "fp32":
            raise IspoError(
                "int8 runs with fp32 activations around its int8 matmuls: use "
                "precision fp32 with int8"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FastSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k.replace("-", "_"): v for k, v in d.items() if k.replace("-", "_") in names})

    def is_plain(self) -> bool:
        """True when nothing beyond precision and batch size is changed."""
        return self.attention == "default" and not self.compile and not self.int8


def attention_backend(name: str):
    """A context restricting SDPA to backend ``name`` (``default``: no restriction)."""
    if name not in ATTENTION_BACKENDS:
        raise IspoError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, not {name!r}")
    member = ATTENTION_BACKENDS[name]
    if member is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, member, None)
    if backend is None:
        raise IspoError(f"attention backend {name!r} is not in torch {torch.__version__}")
    return sdpa_kernel([backend])


def attention_works(name: str, device: torch.device | str, precision: str = "fp32") -> bool:
    """Whether SDPA runs under backend ``name`` on ``device`` with a padding mask (as ispo's
    encoder calls it) in ``precision``."""
    device = torch.device(device)
    dtype = DTYPES[precision]
    q = torch.randn(2, 2, 24, 16, device=device, dtype=dtype)
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool, device=device)
    mask[0, ..., 20:] = False
    try:
        with attention_backend(name):
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            F.scaled_dot_product_attention(q, q, q)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def valid_attention_backends(device: torch.device | str, precision: str = "fp32") -> list[str]:
    """The attention backends usable on ``device`` (``default`` always is)."""
    return [
        n for n in ATTENTION_BACKENDS if n == "default" or attention_works(n, device, precision)
    ]


def int8_available(device: torch.device | str) -> bool:
    """Whether :func:`ispo.model.int8.quantize_int8` has a backend on ``device``."""
    from ispo.model.int8 import Int8Unavailable, quantize_int8

    device = torch.device(device)
    try:
        lin = torch.nn.Sequential(torch.nn.Linear(16, 16)).to(device)
        q, _ = quantize_int8(lin, device)
        with torch.inference_mode():
            q(torch.randn(32, 16, device=device))
    except (Int8Unavailable, RuntimeError, NotImplementedError):
        return False
    return True


def compile_available() -> bool:
    """Whether this torch has ``torch.compile`` (a working compiler is only known on first use)."""
    return hasattr(torch, "compile")


def prepare_encoder(
    model: GeneformerModel,
    settings: FastSettings,
    n_run: int,
) -> tuple[torch.nn.Module, str]:
    """The module ``settings`` runs for ``n_run`` layers, and a one-line description.

    The model's cached encoder is never modified: int8 quantizes a copy, compile wraps it.
    """
    enc = GeneformerModel.encoder(model, n_run, "fp32" if settings.int8 else settings.precision)
    net: torch.nn.Module = enc
    desc = f"ispo Encoder ({n_run} layers, {settings.precision}, attention {settings.attention})"
    if settings.int8:
        from ispo.model.int8 import Int8Unavailable, quantize_int8

        try:
            net, backend = quantize_int8(enc, model.device)
        except Int8Unavailable as exc:
            raise IspoError(f"int8 is not available on {model.device}: {exc}") from exc
        desc += f"; {backend}"
    if settings.compile:
        if not compile_available():
            raise IspoError(f"torch {torch.__version__} has no torch.compile: turn compile off")
        net = torch.compile(net, dynamic=True)
        desc += "; torch.compile(dynamic=True)"
    return net, desc


@contextmanager
def fast_path(model: GeneformerModel, settings: FastSettings) -> Iterator[GeneformerModel]:
    """Run ``model``'s fast encoder with ``settings`` inside the block.

    Every ``model.encoder(n_run, precision)`` call in the block (``ispo.embed``,
    ``ispo.perturb``...) gets the int8 / compiled variant, and SDPA uses the chosen backend.
    ``precision`` and ``batch_tokens`` are not applied here: pass them to the call as usual.
    The model is restored on exit.
    """
    built: dict[tuple[int | None, str], torch.nn.Module] = {}

    def encoder(n_run: int | None = None, precision: str = "fp32") -> torch.nn.Module:
        n = model.config.n_layers if n_run is None else n_run
        key = (n, precision)
        if key not in built:
            s = FastSettings(
                settings.batch_tokens,
                "fp32" if settings.int8 else precision,
                settings.attention,
                settings.compile,
                settings.int8,
            )
            built[key], desc = prepare_encoder(model, s, n)
            log.info("fast path: %s", desc)
        return built[key]

    if settings.compile or settings.int8:
        model.encoder = encoder  # type: ignore[method-assign]  # instance override, undone below
    try:
        with attention_backend(settings.attention):
            yield model
    finally:
        model.__dict__.pop("encoder", None)
