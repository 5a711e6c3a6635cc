"""What ``ispo tune`` searches: the candidate values of each fast-path setting.

A setting is the searched part of :class:`ispo.settings.RunSettings` (token budget, precision,
attention kernel, compile, int8); everything else (layer, pooling, layout) comes from the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ispo.embedding.embed import default_batch_tokens
from ispo.errors import IspoError
from ispo.model import variants
from ispo.provenance import device_name
from ispo.settings import Attention, Precision, RunSettings

#: The RunSettings fields the study searches (the others come from the run: layer, pool...).
SEARCHED = ("batch_tokens", "precision", "attention", "compile", "int8")
PRECISIONS = tuple(p.value for p in Precision if p != Precision.AUTO)
KERNELS = tuple(a.value for a in Attention)


@dataclass
class SearchSpace:
    """The candidate values of each setting (one value: fixed; the study searches the rest)."""

    batch_tokens: list[int] = field(default_factory=list)
    precision: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    compile: list[bool] = field(default_factory=list)
    int8: list[bool] = field(default_factory=list)

    @classmethod
    def for_device(
        cls,
        device: torch.device,
        *,
        batch_tokens: list[int] | None = None,
        precision: list[str] | None = None,
        attention: list[str] | None = None,
        compile: str | list[bool] = "auto",
        int8: str | list[bool] = "auto",
    ) -> SearchSpace:
        """Fill unset choices with what is valid and sensible on ``device``.

        ``compile`` / ``int8``: ``auto`` (search on CUDA; on CPU compile is off, since inductor
        compiles for minutes, and int8 is searched when a backend exists), ``search``, ``on``,
        ``off``, or an explicit list of booleans.
        """
        cuda = device.type == "cuda"
        if batch_tokens is None:
            base = default_batch_tokens(device)
            batch_tokens = [base // 4, base // 2, base, base * 2, base * 4]
        if any(int(b) < 1 for b in batch_tokens):
            raise IspoError("--batch-tokens candidates must be positive")
        if precision is None:
            precision = ["fp32", "bf16"]
            if cuda:
                precision = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        _check_names(precision, PRECISIONS, "precision")
        if attention is None:  # those that run with a padding mask in some searched precision
            attention = [
                a for a in KERNELS if any(variants.attention_works(a, device, p) for p in precision)
            ]
        _check_names(attention, KERNELS, "attention backend")
        comp = _switch(compile, "compile", auto=[False, True] if cuda else [False])
        if True in comp and not variants.compile_available():
            raise IspoError(f"torch {torch.__version__} has no torch.compile: use --compile off")
        q8 = _switch(int8, "int8", auto=None)
        if q8 is None or True in q8:
            available = variants.int8_available(device)
            if q8 is None:
                q8 = [False, True] if available else [False]
            elif not available:
                raise IspoError(f"int8 is not available on {device_name(device)}: use --int8 off")
        return cls(
            sorted({int(b) for b in batch_tokens}),
            _unique(precision),
            _unique(attention),
            _unique(comp),
            _unique(q8),
        )

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    def grid(self) -> list[dict[str, Any]]:
        """Every setting of the space as trial parameters (no precision choice under int8)."""
        out = []
        for q8 in self.int8:
            for p in ["fp32"] if q8 else self.precision:
                for bt in self.batch_tokens:
                    for a in self.attention:
                        for c in self.compile:
                            params = {"int8": q8, "batch_tokens": bt, "attention": a, "compile": c}
                            out.append(params if q8 else {**params, "precision": p})
        return out

    def default_params(self, dev: torch.device) -> dict[str, Any]:
        """The default setting (the speedup's reference), as near as the space allows."""
        return {
            "batch_tokens": _closest(self.batch_tokens, default_batch_tokens(dev)),
            "precision": "fp32" if "fp32" in self.precision else self.precision[0],
            "attention": "default" if "default" in self.attention else self.attention[0],
            "compile": False if False in self.compile else self.compile[0],
            "int8": False if False in self.int8 else self.int8[0],
        }


def searched(settings: RunSettings) -> dict[str, Any]:
    """The searched part of ``settings`` as plain data (what a trial records and compares)."""
    d = settings.to_dict()
    return {k: d[k] for k in SEARCHED}


def params_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Trial parameters as the searched part of settings (int8 runs in fp32)."""
    return {
        "batch_tokens": int(params["batch_tokens"]),
        "precision": "fp32" if params["int8"] else params["precision"],
        "attention": params["attention"],
        "compile": bool(params["compile"]),
        "int8": bool(params["int8"]),
    }


def setting_key(setting: dict[str, Any]) -> str:
    """One string per setting (the searched part), to compare trials by what they measured."""
    return json.dumps(setting, sort_keys=True)


def short(s: RunSettings) -> str:
    """A setting as a log line shows it."""
    extra = "".join([" compile" if s.compile else "", " int8" if s.int8 else ""])
    return f"[{s.precision} bt={s.batch_tokens} attn={s.attention}{extra}]"


def _check_names(values: list[str], known: tuple[str, ...], what: str) -> None:
    bad = [v for v in values if v not in known]
    if bad:
        raise IspoError(f"unknown {what} {bad[0]!r}: choose from {', '.join(known)}")


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def _switch(value: str | list[bool], name: str, *, auto: list[bool] | None) -> list[bool] | None:
    if isinstance(value, (list, tuple)):
        return [bool(v) for v in value]
    choices = {"auto": auto, "search": [False, True], "on": [True], "off": [False]}
    if value not in choices:
        raise IspoError(f"--{name} must be auto, search, on or off, not {value!r}")
    return choices[value]


def _closest(values: list[int], target: int) -> int:
    return min(values, key=lambda v: (abs(math.log(v / target)), v))
