"""Commands that convert index folders: ``migrate`` (older formats -> the current one), ``regions``
(ComCLIP's regions of every image, stored), ``merge``
(IVF shards -> one on-disk index), ``export``
(the live rows in clip-retrieval's embeddings layout) and ``import`` (clip-retrieval's inference
output -> an index folder, without re-embedding)."""
from __future__ import annotations

import time

import click

from .common import POSITIVE, Finite, Size


@click.command()
@click.argument("index", type=click.Path())
def migrate(index):
    """Rewrite INDEX, written by an older version, in the current format (no re-embedding).

    IVF shards keep their trained centroids and tuned nprobe; the vectors end up stored once. Shards
    without a full-text file (folders built before keyword search) get one from their metadata. A killed
    migration leaves the folder as it was; re-run it.
    """
    from ..ops.fulltext import add_fulltext
    from ..ops.migrate import migrate as run

    click.echo(run(index).line())
    click.echo(add_fulltext(index).line())


@click.command()
@click.argument("index", type=click.Path())
@click.option("--max-boxes", type=click.IntRange(1, 64), default=None,
              help="Region proposals per image (default: the folder's setting, else 16).")
@click.option("--from", "dense", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="A dense captioner's boxes instead of proposals: {image key or path: {caption: [[x1, y1, x2, y2], "
                   "...]}} (GRiT's output, as ComCLIP uses it).")
@click.option("--image-root", "image_roots", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Another folder images may be read from (as `serve --image-root`).")
@click.option("--redo", is_flag=True, help="Recompute every shard's regions, not only the missing ones.")
def regions(index, max_boxes, dense, image_roots, redo):
    """Store ComCLIP's regions of INDEX's images: boxes and their masked images' embeddings.

    A `search --rerank comclip` then reads each candidate's regions instead of running selective search
    and one model forward per box (it still encodes the caption's parts and draws each predicate's
    overlay). Costs (1 + boxes) x dim x 2 bytes per image (16 boxes, 512-d: 17 KB). Syncs add the new
    images' regions; compact carries them. A killed run leaves the folder as it was.
    """
    from ..ops.regions import add_regions
    from ..query import open_index
    from ..query.comclip import load_regions

    given = None
    if dense:
        try:
            given = load_regions(dense)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--from") from None
    idx = open_index(index, "auto")
    click.echo(add_regions(index, idx.clip, max_boxes, given, image_roots, redo).line())


@click.command()
@click.argument("index", type=click.Path())
@click.option("--modality", "modalities", type=click.Choice(["image", "text"]), multiple=True,
              help="Merge only this modality (repeatable; default: every modality with IVF shards).")
def merge(index, modalities):
    """Merge each modality's IVF shards of INDEX into one on-disk index that searches memory-map.

    For indexes larger than RAM on one node: the lists go to one .ivfdata file (the page cache holds
    them, not the process); results are the shards' results. Shards must share the build's trained
    quantizer. `compact` and `retrieval bias` merge it again themselves; shards added later are
    searched beside it.
    """
    from ..errors import IndexFolderError
    from ..ops.merge import merge as run

    report = run(index, list(modalities) or None)
    if not report.merged:
        raise IndexFolderError(f"nothing merged: {report.line()}")
    click.echo(report.line())


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


@click.command("import")
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Index folder to write; re-run to resume a killed import.")
@click.option("--model", required=True,
              help="The open_clip arch that made the embeddings (e.g. ViT-B-32), or a folder with open_clip_config.json.")
@click.option("--pretrained", default=None, help="Its pretrained tag or checkpoint (recorded; loaded only for --bias-bank generic).")
@click.option("--logit-scale", type=Finite(1e-6), default=None,
              help="The model's logit scale; default: read from the checkpoint when the model is a local file or "
                   "folder, else 100 (the released CLIPs'), assumed and not checked. Checked against a model opened later.")
@click.option("--shard-size", type=POSITIVE, default=100_000, show_default=True, help="Rows per shard (one faiss index each).")
@click.option("--index-key", default=None, help="faiss factory string for every shard (default: chosen per shard).")
@click.option("--memory-budget", type=Size(), default="4GB", show_default=True, help="Memory budget of the whole index (every shard), e.g. 4GB.")
@click.option("--bias-bank", type=click.Choice(["corpus", "generic", "none"]), default="corpus", show_default=True,
              help="Bias offsets for exact BSAP/NNN: from sampled captions (corpus), generic prompts (loads the model), or none.")
@click.option("--normalize", is_flag=True, help="L2-normalise the vectors (default: refuse vectors that are not unit-norm).")
@click.option("--image-root", default=None, type=click.Path(), help="Folder relative image_path values are under (to serve images).")
def import_(src, out, model, pretrained, logit_scale, shard_size, index_key, memory_budget, bias_bank, normalize,
            image_root):
    """Turn clip-retrieval's `inference` output SRC (img_emb/, text_emb/, metadata/) into an index
    folder without re-embedding.

    Row i of clip-retrieval (parts in order) keeps global id i, so ids from its back stay valid. The
    model is what you declare: it is recorded as declared, and a model opened against the index later
    is checked for its width and logit scale only. SRC is only read; every file of OUT is written anew
    (no links). clip-retrieval's image.index/text.index are not used: the indexes are rebuilt from the
    embeddings, with the bias offsets inside.
    """
    from ..ops.importer import import_folder

    t0 = time.perf_counter()
    m = import_folder(src, out, model, pretrained, logit_scale=logit_scale, index_key=index_key, shard_size=shard_size,
                      bias_bank=None if bias_bank == "none" else bias_bank, normalize=normalize,
                      memory_budget=memory_budget, image_root=image_root)
    c = m["counts"]
    click.echo(f"imported {c['rows']} rows ({c['captionless']} without a caption) in {len(m['shards'])} shards "
               f"in {time.perf_counter() - t0:.1f} s -> {out}")
