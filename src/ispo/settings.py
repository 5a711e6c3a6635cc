"""How a run computes: one settings object that the CLI, YAML configs, ``ispo tune`` and the API
all build, and that the loader and the runner read.

Every switch is a field with a default that reproduces the plain fast path, so a setting can be
turned off to compare. String choices are ``StrEnum`` members: ``Precision.BF16 == "bf16"``, so YAML
files and keyword arguments keep their plain spellings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from ispo.errors import IspoError


class Choice(StrEnum):
    """A string choice that names its options in the error for a wrong one."""

    @classmethod
    def parse(cls, value: str | Choice, what: str) -> Choice:
        try:
            return cls(value)
        except ValueError:
            options = ", ".join(m.value for m in cls)
            raise IspoError(f"{what} must be one of {options}, not {value!r}") from None


class Precision(Choice):
    """Weights and activations of the encoder; ``auto`` is bf16 where the hardware computes
    bf16 natively (GPUs of compute capability 8.0+, CPUs with AMX or AVX-512 bf16) and fp32
    elsewhere."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Layout(Choice):
    """How a batch of cells of different lengths is laid out: padded to its longest cell (a
    mask), or packed end to end (varlen attention, no padding)."""

    AUTO = "auto"
    PADDED = "padded"
    PACKED = "packed"


class Attention(Choice):
    """The SDPA kernel (``default``: PyTorch chooses)."""

    DEFAULT = "default"
    MATH = "math"
    FLASH = "flash"
    EFFICIENT = "efficient"
    CUDNN = "cudnn"


class Pool(Choice):
    """Cell embedding: mean over gene tokens, or the ``<cls>`` token (V2 models)."""

    MEAN = "mean"
    CLS = "cls"


@dataclass(frozen=True)
class RunSettings:
    """Speed and numerics of one run (embed, perturb, tune trial, benchmark row).

    Attributes
    ----------
    precision
        Encoder dtype; ``auto`` is resolved once, at load.
    layout
        Batch layout for cells of different lengths.
    batch_tokens
        Token budget per batch (cells x longest cell); None: the device default.
    attention
        SDPA kernel.
    compile
        ``torch.compile`` the encoder (built once, at load).
    int8
        Linear layers in int8 (fp32 activations around the int8 matmuls).
    emb_layer
        Geneformer's convention: -1 the penultimate layer, 0 the last.
    pool
        ``mean`` or ``cls``.
    """

    precision: Precision = Precision.FP32
    layout: Layout = Layout.AUTO
    batch_tokens: int | None = None
    attention: Attention = Attention.DEFAULT
    compile: bool = False
    int8: bool = False
    emb_layer: int = -1
    pool: Pool = Pool.MEAN

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ so plain strings are accepted
        for name, kind in (
            ("precision", Precision),
            ("layout", Layout),
            ("attention", Attention),
            ("pool", Pool),
        ):
            object.__setattr__(self, name, kind.parse(getattr(self, name), name))
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise IspoError(f"batch_tokens must be positive, not {self.batch_tokens}")
        if self.int8 and self.precision not in (Precision.FP32, Precision.AUTO):
            raise IspoError(
                "int8 runs with fp32 activations around its int8 matmuls: use precision fp32 "
                "with int8"
            )
        if self.emb_layer not in (-1, 0):
            raise IspoError(f"emb_layer must be -1 (penultimate) or 0 (last), not {self.emb_layer}")

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with ``changes`` applied (and checked); ``None`` values leave a field as it is,
        so keyword arguments that were not given can be passed straight through."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def is_plain(self) -> bool:
        """True when the encoder is the plain one: no attention kernel forced, no compile, no
        int8 (precision and batching are not encoder variants)."""
        return self.attention == Attention.DEFAULT and not self.compile and not self.int8

    def variant(self) -> dict[str, Any] | None:
        """The encoder variant as plain data (attention, compile, int8), None when plain: what
        outputs record as ``fast_settings`` and what a resumed run must match."""
        if self.is_plain():
            return None
        return {"attention": str(self.attention), "compile": self.compile, "int8": self.int8}

    def encoder_key(self) -> tuple:
        """What distinguishes one built encoder from another (the loader caches by it)."""
        return (str(self.precision), str(self.attention), self.compile, self.int8)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (Enums as their strings), for metadata, YAML and fingerprints."""
        return {k: (str(v) if isinstance(v, Choice) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        """Settings from plain data; ``batch-tokens`` and ``batch_tokens`` both work, keys that
        are not settings are ignored (a config holds other options too)."""
        names = {f.name for f in fields(cls)}
        kept = {k.replace("-", "_"): v for k, v in d.items()}
        return cls(**{k: v for k, v in kept.items() if k in names and v is not None})
