"""The benchmark's methods as data: a registry of named specs, each one visible switch.

A method is a :class:`MethodSpec`: which embedding path runs (the reference Hugging Face
``BertForMaskedLM`` or ispo's fast encoder), in which precision, with how many cells per batch,
and whether its linear layers are int8 or the encoder is compiled. :func:`prepare` turns a spec
into the module that runs; it raises :class:`Unavailable` (with the reason) instead of quietly
running something else.

Extend the table with :func:`register`::

    register(MethodSpec("fast-fp16", "ispo fast fp16", "fast", "fast", precision="fp16"))

Names accepted by :func:`resolve_methods` are the registry's keys plus the groups in
:data:`GROUPS`; ``batching`` expands to one ``batching-N`` per requested batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ispo.errors import IspoError
from ispo.model import variants
from ispo.model.load import GeneformerModel
from ispo.settings import Precision, RunSettings

Path_ = Literal["baseline", "fast"]


class Unavailable(RuntimeError):
    """The method cannot run here (missing backend, unsupported device); the message says why."""


@dataclass(frozen=True)
class MethodSpec:
    """One row of the methods table.

    Attributes
    ----------
    name
        Key used on the command line (``--methods``) and in results files.
    label
        Human-readable row title (``{bs}`` is replaced by the batch size).
    family
        ``baseline``, ``batching``, ``mixed_precision``, ``quantization`` or ``fast``.
    path
        ``baseline``: the reference ``BertForMaskedLM`` (MLM head, all layers, fixed padded
        batches in input order, ``output_hidden_states=True``). ``fast``: ispo's encoder.
    precision
        ``fp32``; ``fp16``/``bf16`` are autocast on the reference path and the weights' dtype on
        the fast path.
    batch_size
        Cells per batch on the reference path; ``None`` means the run's ``ref_batch_size``.
        The fast path batches by a token budget instead.
    int8
        Quantize every ``nn.Linear`` to int8 (see :mod:`ispo.model.int8`).
    compile
        Wrap the fast encoder in ``torch.compile`` (warm-up is then a full pass).
    """

    name: str
    label: str
    family: str
    path: Path_
    precision: Precision = "fp32"
    batch_size: int | None = None
    int8: bool = False
    compile: bool = False
    description: str = ""

    def title(self) -> str:
        return self.label.replace("{bs}", str(self.batch_size))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype whose peak FLOP/s the MFU is measured against."""
        if self.int8:
            return torch.int8
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            self.precision
        ]


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add (or replace) a method in the registry."""
    REGISTRY[spec.name] = spec
    return spec


BASELINE_BATCH = 10  # the reference's baseline: Helical's default of 10 cells per batch

for _spec in [
    MethodSpec(
        "baseline",
        "Baseline (bs={bs})",
        "baseline",
        "baseline",
        batch_size=BASELINE_BATCH,
        description="Hugging Face BertForMaskedLM, fp32, 10 cells per batch in input "
        "order, padded, output_hidden_states=True",
    ),
    MethodSpec(
        "fp16",
        "Mixed precision fp16 (bs={bs})",
        "mixed_precision",
        "baseline",
        "fp16",
        description="reference path under torch.autocast(float16)",
    ),
    MethodSpec(
        "bf16",
        "Mixed precision bf16 (bs={bs})",
        "mixed_precision",
        "baseline",
        "bf16",
        description="reference path under torch.autocast(bfloat16)",
    ),
    MethodSpec(
        "int8",
        "Quantization int8 (bs={bs})",
        "quantization",
        "baseline",
        int8=True,
        description="reference path with every nn.Linear computed in int8",
    ),
    MethodSpec(
        "fast",
        "ispo fast fp32",
        "fast",
        "fast",
        description="ispo encoder: needed layers only, no MLM head, length-sorted "
        "token-budget batches, SDPA, inference_mode",
    ),
    MethodSpec(
        "fast-bf16",
        "ispo fast bf16",
        "fast",
        "fast",
        "bf16",
        description="ispo fast path with bf16 weights and activations",
    ),
    MethodSpec(
        "fast-fp16",
        "ispo fast fp16",
        "fast",
        "fast",
        "fp16",
        description="ispo fast path with fp16 weights and activations",
    ),
    MethodSpec(
        "fast-int8",
        "ispo fast int8",
        "fast",
        "fast",
        int8=True,
        description="ispo fast path with every nn.Linear computed in int8",
    ),
    MethodSpec(
        "fast+compile",
        "ispo fast fp32 + compile",
        "fast",
        "fast",
        compile=True,
        description="ispo fast path under torch.compile(dynamic=True)",
    ),
    MethodSpec(
        "fast-bf16+compile",
        "ispo fast bf16 + compile",
        "fast",
        "fast",
        "bf16",
        compile=True,
        description="ispo fast bf16 under torch.compile(dynamic=True)",
    ),
]:
    register(_spec)


def batching_spec(batch_size: int) -> MethodSpec:
    """The reference path in fp32 with ``batch_size`` cells per batch (the reference's batching)."""
    return MethodSpec(
        f"batching-{batch_size}",
        "Batching (bs={bs})",
        "batching",
        "baseline",
        batch_size=batch_size,
        description=f"reference path, fp32, {batch_size} cells per batch",
    )


_REFERENCE = ["baseline", "batching", "fp16", "bf16", "int8"]  # the reference project's methods
GROUPS: dict[str, list[str]] = {
    "reference": _REFERENCE,
    "mixed_precision": ["fp16", "bf16"],
    "quantization": ["int8"],
    "compile": ["fast+compile", "fast-bf16+compile"],
    "all": [
        *_REFERENCE,
        "fast",
        "fast-bf16",
        "fast-fp16",
        "fast-int8",
        "fast+compile",
        "fast-bf16+compile",
    ],
}
DEFAULT_METHODS = [*_REFERENCE, "fast", "fast-bf16", "fast+compile"]
DEFAULT_BATCH_SIZES = (8, 16, 64, 256, 512)
REF_BATCH_SIZE = 256  # the reference ran mixed precision and quantization at 256 cells per batch


def resolve_methods(
    names: str | list[str] | None,
    *,
    batch_sizes: tuple[int, ...] | list[int] = DEFAULT_BATCH_SIZES,
    ref_batch_size: int = REF_BATCH_SIZE,
) -> list[MethodSpec]:
    """Specs for a comma-separated list (or list) of method and group names, baseline first.

    The fp32 baseline is always included: it is the reference for speedup and consistency.
    """
    if names is None:
        names = list(DEFAULT_METHODS)
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if any(b < 1 for b in batch_sizes) or ref_batch_size < 1:
        raise IspoError("batch sizes must be positive integers")
    out: list[MethodSpec] = []

    def add(name: str) -> None:
        if name in GROUPS:
            for member in GROUPS[name]:
                add(member)
            return
        if name == "batching":
            specs = [batching_spec(b) for b in batch_sizes]
        elif name.startswith("batching-") and name[9:].isdigit():
            specs = [batching_spec(int(name[9:]))]
        elif name in REGISTRY:
            spec = REGISTRY[name]
            specs = [
                replace(spec, batch_size=ref_batch_size)
                if spec.path == "baseline" and spec.batch_size is None
                else spec
            ]
        else:
            known = ", ".join([*GROUPS, "batching", "batching-N", *REGISTRY])
            raise IspoError(f"unknown benchmark method {name!r}: choose from {known}")
        for s in specs:
            if s.name not in {o.name for o in out}:
                out.append(s)

    for n in names:
        add(n)
    if not any(s.name == "baseline" for s in out):
        out.insert(0, REGISTRY["baseline"])
    else:
        out.sort(key=lambda s: s.name != "baseline")
    return out


@dataclass
class Prepared:
    """What :func:`prepare` built: the module to run (``None``: the model's own) and notes."""

    net: torch.nn.Module | None
    backend: str
    int8_linear_layers: int | None = None


def prepare(spec: MethodSpec, model: GeneformerModel, n_run: int) -> Prepared:
    """Build the module ``spec`` runs; raise :class:`Unavailable` if this device cannot.

    The fast path is built by :func:`ispo.model.variants.build_encoder`, as ``ispo embed``,
    ``ispo perturb`` and ``ispo tune`` build it; the reference path gets the same int8 and
    compile steps around the Hugging Face model.
    """
    try:
        if spec.path == "fast":
            settings = RunSettings(
                precision="fp32" if spec.int8 else spec.precision,
                int8=spec.int8,
                compile=spec.compile,
            )
            built = variants.build_encoder(
                model.config, model.state_dict, n_run, settings, model.device
            )
            return Prepared(built.net, built.description, built.int8_linear_layers)
        return _prepare_reference(spec, model)
    except IspoError as exc:
        raise Unavailable(str(exc)) from exc


def _prepare_reference(spec: MethodSpec, model: GeneformerModel) -> Prepared:
    """The reference ``BertForMaskedLM`` under ``spec``'s int8 / compile (autocast is applied
    by the runner); ``net`` is None when the model's own module runs unchanged."""
    desc = "transformers BertForMaskedLM"
    if spec.precision != "fp32":
        desc += f" + torch.autocast({spec.precision})"
    if model.device.type == "cpu" and spec.precision == "fp16":
        desc += " (CPU fp16 is emulated unless the CPU has AVX512-FP16/AMX-FP16)"
    net: torch.nn.Module | None = None
    n_int8 = None
    if spec.int8:
        if spec.precision != "fp32":
            raise Unavailable("int8 methods run with fp32 activations outside the int8 matmuls")
        net, backend, n_int8 = variants.apply_int8(model.hf_model(), model.device)
        desc += f"; {backend}; {n_int8} int8 linear layers"
    if spec.compile:
        net = variants.apply_compile(net if net is not None else model.hf_model())
        desc += "; torch.compile(dynamic=True, inductor)"
    return Prepared(net, desc, n_int8)
