"""The ``ispo`` command line: thin wrappers over the Python API.

Every user mistake ends in one line on stderr (``error: ...``) and exit code 2, with no
traceback unless ``--debug``; outputs are written atomically, never half.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ispo.errors import IspoError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Fast, exact Geneformer embeddings and in-silico perturbation.")
log = logging.getLogger("ispo")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="checkpoint directory or preset")]
VocabOpt = Annotated[Optional[str], typer.Option(
    "--vocab", help="Geneformer dictionary directory, or 'demo' (default for demo data)")]
RandomOpt = Annotated[bool, typer.Option("--random-init", help="preset with seeded random "
                                         "weights (speed work only, not biology)")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of random weights")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
LayerOpt = Annotated[Optional[str], typer.Option("--layer", help="layer of raw counts (default X)")]
GeneKeyOpt = Annotated[Optional[str], typer.Option("--gene-key", help="var column of Ensembl ids")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing output")]


def open_data(source: str, vocab: str | None, *, backed: bool = True):
    """(AnnData, Vocab) for an input path or ``demo[:N]`` (built-in synthetic data)."""
    import ispo

    if source == "demo" or source.startswith("demo:"):
        n = int(source.split(":", 1)[1]) if ":" in source else 1000
        adata = ispo.demo_adata(n)
        return adata, ispo.demo_vocab() if vocab in (None, "demo") else ispo.load_vocab(vocab)
    if vocab is None:
        raise IspoError("--vocab DIR is required: the Geneformer dictionaries of the model")
    voc = ispo.demo_vocab() if vocab == "demo" else ispo.load_vocab(vocab)
    return ispo.read_input(source, backed=backed), voc


@app.command()
def embed(
    input: Annotated[str, typer.Argument(help=".h5ad of raw counts, or demo[:N]")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .h5ad")],
    model: ModelOpt,
    vocab: VocabOpt = None,
    random_init: RandomOpt = False,
    seed: SeedOpt = 0,
    method: Annotated[str, typer.Option(help="fast or baseline")] = "fast",
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16")] = "fp32",
    device: DeviceOpt = "auto",
    emb_layer: Annotated[int, typer.Option(help="-1 penultimate (Geneformer), 0 last")] = -1,
    pool: Annotated[str, typer.Option(help="mean, or cls (V2)")] = "mean",
    batch_tokens: Annotated[Optional[int], typer.Option(help="token budget per batch")] = None,
    layer: LayerOpt = None,
    gene_key: GeneKeyOpt = None,
    key_added: Annotated[str, typer.Option(help="obsm key")] = "X_geneformer",
    overwrite: OverwriteOpt = False,
) -> None:
    """Embed every cell: writes OUT.h5ad with obsm[KEY] and uns['geneformer']."""
    import ispo
    from ispo.data.write import atomic_output, check_output

    check_output(out, overwrite)
    if method not in ("fast", "baseline"):
        raise IspoError(f"--method must be fast or baseline, not {method!r}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise IspoError(f"--precision must be fp32, fp16 or bf16, not {precision!r}")
    if pool not in ("mean", "cls"):
        raise IspoError(f"--pool must be mean or cls, not {pool!r}")
    adata, voc = open_data(input, vocab, backed=False)
    mdl = ispo.load_model(model, vocab=voc, device=device, random_init=random_init, seed=seed)
    ispo.embed(adata, mdl, method=method, precision=precision, emb_layer=emb_layer,
               pool_mode=pool, batch_tokens=batch_tokens, layer=layer, gene_key=gene_key,
               key_added=key_added, progress=True)
    with atomic_output(out, overwrite) as tmp:
        adata.write_h5ad(tmp)
    n = int(adata.obs["geneformer_embedded"].sum())
    typer.echo(f"embedded {n:,} of {adata.n_obs:,} cells -> {out} (obsm[{key_added!r}])")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="output .h5ad")],
    n_cells: Annotated[int, typer.Option(help="number of cells")] = 1000,
    version: Annotated[int, typer.Option(help="1 or 2: vocabulary layout")] = 1,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the built-in SYNTHETIC sci-Plex2-like data set (use --vocab demo with it)."""
    import ispo
    from ispo.data.write import atomic_output

    adata = ispo.demo_adata(n_cells, version=version, seed=seed)
    with atomic_output(out, overwrite) as tmp:
        adata.write_h5ad(tmp)
    typer.echo(f"wrote {n_cells:,} synthetic cells -> {out}")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False,
) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Entry point: one clear line and exit 2 for user errors; tracebacks only with --debug."""
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except IspoError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: say so in one line
        if debug:
            raise
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        print(f"error: internal {type(exc).__name__}: {exc} (rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        sys.exit(1)
