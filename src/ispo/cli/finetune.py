"""``ispo finetune``: a cell classifier trained on a Geneformer (ispo.training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import (
    BatchTokensOpt,
    DeviceOpt,
    GeneKeyOpt,
    LayerOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    RandomOpt,
    ResumeOpt,
    VocabOpt,
    WandbOpt,
    WandbProjectOpt_,
)
from ispo.training.settings import TrainSettings

_D = TrainSettings()  # the defaults the flags show


@app.command()
def finetune(
    input: Annotated[str, typer.Argument(help=".h5ad of raw counts with a label column")],
    label_key: Annotated[str, typer.Option(help="obs column of the classes to learn")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="result folder to create")],
    vocab: VocabOpt = None,
    random_init: RandomOpt = False,
    epochs: Annotated[int, typer.Option(help="passes over the training cells")] = _D.epochs,
    lr: Annotated[float, typer.Option(help="peak learning rate (AdamW)")] = _D.lr,
    warmup: Annotated[
        float, typer.Option(help="warm-up: steps if >= 1, a share of all steps if < 1")
    ] = _D.warmup,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay")] = _D.weight_decay,
    schedule: Annotated[str, typer.Option(help="linear or cosine decay")] = str(_D.schedule),
    freeze_layers: Annotated[
        int, typer.Option(help="first N encoder layers not trained (Geneformer's meaning)")
    ] = _D.freeze_layers,
    dropout: Annotated[
        float | None,
        typer.Option(help="hidden and attention dropout while training (default: the config's)"),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="stop after N epochs without a better validation macro-F1")
    ] = None,
    batch_tokens: BatchTokensOpt = None,
    max_input: Annotated[
        int | None,
        typer.Option(
            help="model input size: each cell keeps its N top-ranked genes, and the saved "
            "model reads N (default: the model's own)"
        ),
    ] = None,
    precision: PrecisionOpt = "auto",
    val_size: Annotated[float, typer.Option(help="validation share (stratified)")] = _D.val_size,
    test_size: Annotated[float, typer.Option(help="test share (0: none)")] = _D.test_size,
    seed: Annotated[
        int, typer.Option(help="seed of the split, weights, batch order, dropout")
    ] = _D.seed,
    device: DeviceOpt = "auto",
    layer: LayerOpt = None,
    gene_key: GeneKeyOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    wandb: WandbOpt = False,
    wandb_project: WandbProjectOpt_ = "ispo",
) -> None:
    """Fine-tune a cell classifier: a BertForSequenceClassification folder (transformers and
    Geneformer load it as it is) with metrics.json, split.csv and PNGs.

    Each epoch is checkpointed in OUT.train/; --resume continues a stopped run.
    """
    import ispo
    from ispo.config import current_params, save_run_config
    from ispo.tracking import make_tracker
    from ispo.training import DataOptions

    params = current_params()
    names = {"input", "label_key", "model", "out", "vocab", "random_init", "device", "layer"}
    names |= {"gene_key", "resume", "overwrite", "wandb", "wandb_project"}
    settings = TrainSettings.from_dict({k: v for k, v in params.items() if k not in names})
    options = DataOptions(label_key, vocab, layer, gene_key)
    with make_tracker(
        wandb=wandb, project=wandb_project, run_name=f"finetune {Path(input).name}", config=params
    ) as tracker:
        m = ispo.finetune(
            input, model, out, options, settings,
            random_init=random_init, device=device, resume=resume, overwrite=overwrite,
            tracker=tracker,
        )  # fmt: skip
        tracker.summary({f"validation/{k}": v for k, v in m["validation"].items()})
        tracker.log_artifact(out, name="finetuned", type="model")
    save_run_config(out, params, command="finetune")
    _echo(m, out)


def _echo(m: dict, out: Path) -> None:
    """The one-line outcome of ``ispo finetune``, and a note when the start was random."""
    v, sizes = m["validation"], m["split"]["cells_per_class"]
    test = f", test macro-F1 {m['test']['macro_f1']:.3f}" if m["test"] else ""
    typer.echo(
        f"{len(m['classes'])} classes, {sum(sizes['train']):,} training cells: best epoch "
        f"{m['best_epoch']} of {len(m['epochs'])}, validation macro-F1 {v['macro_f1']:.3f} "
        f"(accuracy {v['accuracy']:.3f}){test} -> {out}/"
    )
    if m["random_init"]:
        typer.echo("note: trained from RANDOM weights (a preset with --random-init)", err=True)
