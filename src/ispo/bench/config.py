"""What a benchmark run is asked: :class:`BenchConfig` (recorded in the results' metadata)."""

from __future__ import annotations

from dataclasses import dataclass

from ispo.bench.methods import DEFAULT_BATCH_SIZES, REF_BATCH_SIZE


@dataclass
class BenchConfig:
    """Parameters of a benchmark run (recorded in the results).

    ``row_budget_s`` (CPU, every row but the baseline and compiled ones): a method whose
    warm-up predicts a pass longer than this is timed on the first cells that fit it, and its
    row says so; None: every method runs on every cell. ``max_slowdown``: see
    :func:`ispo.bench.guards.check_pace`. ``peak``: the CPU peak MFU is measured against
    (:class:`ispo.peak.PeakMode`: ``auto`` measures it once per machine).
    """

    methods: list[str] | str | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    ref_batch_size: int = REF_BATCH_SIZE
    emb_layer: int = -1
    batch_tokens: int | None = None
    repeats: int = 3
    repeat_budget_s: float = 10.0
    warmup_cells: int = 16
    max_slowdown: float | None = 5.0
    row_budget_s: float | None = None
    memory_fraction: float = 0.6
    tokenize_repeats: int = 5
    peak: str = "auto"
