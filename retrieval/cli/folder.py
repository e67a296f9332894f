"""Commands that convert an index folder: ``migrate`` (older formats -> the current one) and
``export`` (the live rows in clip-retrieval's embeddings layout)."""
from __future__ import annotations

import click


@click.command()
@click.argument("index", type=click.Path())
def migrate(index):
    """Rewrite INDEX, written by an older version, in the current format (no re-embedding).

    IVF shards keep their trained centroids and tuned nprobe; the vectors end up stored once. A killed
    migration leaves the folder as it was; re-run it.
    """
    from ..ops.migrate import migrate as run

    click.echo(run(index).line())


@click.command()
@click.argument("index", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--modalities", default="image,text", show_default=True,
              help="Comma-separated: which embeddings to write (image, text).")
def export(index, out, modalities):
    """Write the live rows of INDEX to OUT as clip-retrieval's layout: img_emb/, text_emb/ (fp16 npy)
    and metadata/ (Parquet), row-aligned, for tools that read embedding folders directly."""
    from ..ops.export import export_embeddings

    wanted = [m.strip() for m in modalities.split(",") if m.strip()]
    try:
        report = export_embeddings(index, out, wanted)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--modalities") from None
    click.echo(report.line())
