"""The option types shared by the ``ispo`` commands (``Annotated`` typer options, named so each
command reads as its list of flags) and the helpers that turn the run flags into settings and
a loaded model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ispo.settings import RunSettings

if TYPE_CHECKING:
    from ispo.model.load import GeneformerModel

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="checkpoint directory, Hugging Face hub folder (OWNER/NAME/FOLDER[@REVISION], "
        "e.g. ctheodoris/Geneformer/Geneformer-V1-10M) or preset",
    ),
]
VocabOpt = Annotated[
    str | None,
    typer.Option(
        "--vocab",
        help="Geneformer dictionary directory, geneformer-v1 / geneformer-v2 (from the Hugging "
        "Face hub), or 'demo' (default for demo data)",
    ),
]
RandomOpt = Annotated[
    bool,
    typer.Option(
        "--random-init", help="preset with seeded random weights (speed work only, not biology)"
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of random weights")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="layer of raw counts (default X)")]
GeneKeyOpt = Annotated[str | None, typer.Option("--gene-key", help="var column of Ensembl ids")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing output")]
# the run settings (ispo.settings.RunSettings), shared by embed, perturb and tune
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="fp32, fp16, bf16, or auto (bf16 on CUDA and on CPUs with bf16 matrix units, "
        "fp32 elsewhere)"
    ),
]
BatchTokensOpt = Annotated[int | None, typer.Option(help="token budget per batch")]
AttentionOpt = Annotated[
    str, typer.Option(help="SDPA kernel of the fast path: default, math, flash, efficient, cudnn")
]
CompileOpt = Annotated[bool, typer.Option(help="torch.compile the fast encoder")]
Int8Opt = Annotated[bool, typer.Option(help="int8 linear layers (fast path, fp32 activations)")]
EmbLayerOpt = Annotated[int, typer.Option(help="-1 penultimate (Geneformer), 0 last")]
PoolOpt = Annotated[str, typer.Option(help="mean, or cls (V2)")]
# options of one command, named here so each command reads as its list of flags
ChunkCellsOpt = Annotated[
    int, typer.Option(help="input rows embedded and saved at a time (the unit --resume skips)")
]
NoXOpt = Annotated[
    bool,
    typer.Option("--no-x", help="leave X and layers out of the output (obs, var, obsm, uns only)"),
]
NoProbsOpt = Annotated[
    bool,
    typer.Option(
        "--no-probs",
        help="a fine-tuned cell classifier's model: leave out its class probabilities "
        "(runs stop at the pooled layer)",
    ),
]
PerturbTypeOpt = Annotated[str, typer.Option(help="delete, overexpress, inhibit or activate")]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option("--filter", help="keep cells with obs KEY in values: KEY=v1,v2 (repeatable)"),
]
NCellsOpt = Annotated[int | None, typer.Option(help="tune on a seeded random subset of N cells")]
MemoryCapOpt = Annotated[
    float | None,
    typer.Option(help="peak memory cap in GiB (default 90% of the GPU, or of RAM on CPU)"),
]
BatchTokensListOpt = Annotated[
    list[int] | None,
    typer.Option(help="token budget candidates (repeatable; default around the device default)"),
]
PrecisionListOpt = Annotated[
    list[str] | None, typer.Option(help="precision candidates: fp32, fp16, bf16 (repeatable)")
]
AttentionListOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="SDPA backends: default, math, flash, efficient, cudnn (repeatable; default: "
        "those that run on the device)"
    ),
]
CompileSearchOpt = Annotated[
    str, typer.Option(help="torch.compile: auto (search on CUDA, off on CPU), search, on, off")
]
TimeoutOpt = Annotated[
    float | None, typer.Option(help="stop starting trials after this many seconds")
]
PeakOpt = Annotated[
    str,
    typer.Option(
        help="CPU peak for MFU: auto (dense products measured once per machine, about 1 s "
        "per native dtype, then cached), measure (measure again now), nominal (cores x "
        "clock x FLOP per cycle)"
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue a stopped run")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="processes that read and tokenize ahead of the device "
        "(default: the cores left after the main process; 0: a thread)"
    ),
]

WandbOpt = Annotated[
    bool,
    typer.Option(
        "--wandb",
        help="track with Weights & Biases "
        "(WANDB_MODE=offline works); MLflow too when "
        "MLFLOW_TRACKING_URI is set",
    ),
]
WandbProjectOpt_ = Annotated[str, typer.Option("--wandb-project", help="tracking project")]


def parse_filters(items: list[str] | None) -> dict[str, list[str]]:
    """Repeated ``--filter KEY=v1,v2`` as ``{KEY: [v1, v2]}`` (embed and perturb)."""
    from ispo.errors import IspoError

    cell_filter = {}
    for item in items or []:
        if "=" not in item:
            raise IspoError(f"--filter {item!r} is not KEY=v1,v2")
        key, values = item.split("=", 1)
        cell_filter[key] = values.split(",")
    return cell_filter


def run_settings(
    precision: str,
    batch_tokens: int | None,
    attention: str,
    compile: bool,
    int8: bool,
    emb_layer: int,
    pool: str = "mean",
) -> RunSettings:
    """The :class:`~ispo.settings.RunSettings` of the shared flags (embed, perturb; checked
    here, before any input is read)."""
    return RunSettings(
        precision=precision,
        batch_tokens=batch_tokens,
        attention=attention,
        compile=compile,
        int8=int8,
        emb_layer=emb_layer,
        pool=pool,
    )


def load_for_run(
    model: str, vocab, device: str, random_init: bool, seed: int, settings
) -> GeneformerModel:
    """The model with the run's settings built in (encoder variants, ``precision auto``
    resolved once); what auto chose is printed."""
    import ispo

    mdl = ispo.load_model(
        model, vocab=vocab, device=device, random_init=random_init, seed=seed, settings=settings
    )
    if mdl.precision_note is not None:
        typer.echo(f"precision auto: {mdl.precision_note}", err=True)
    return mdl
