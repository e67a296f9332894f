"""``retrieval search``: query an index from the command line."""
from __future__ import annotations

import json
import os

import click

from ..methods.rerank import METHODS as RERANK_METHODS
from ..query.backends import BACKENDS
from ..methods.dedup import DEFAULT_THRESHOLD as DEDUP
from .common import POSITIVE, Finite


@click.command()
@click.argument("index", type=click.Path())
@click.argument("text", required=False)
@click.option("--image", "image", type=click.Path(), help="Search with an image file instead of text.")
@click.option("--k", type=POSITIVE, default=20, show_default=True, help="Results per query.")
@click.option("--target", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="Search among the corpus images or its captions.")
@click.option("--rerank", type=click.Choice(RERANK_METHODS), default="clip", show_default=True,
              help="clip cosine; bsap, hybrid (BSAP-H) and nnn exact over the whole corpus (or over --candidates).")
@click.option("--candidates", type=POSITIVE, default=None, help="Rerank CLIP's top N instead of searching exactly.")
@click.option("--lam", type=Finite(0.0, 1.0), default=None,
              help="BSAP-H: weight of CLIP in s - (1 - lam) c (1: plain CLIP, 0: BSAP's ranking); "
                   "default: the lambda `retrieval bias` chose from the index's own pairs (else 0.1 for images, 0.2 for text).")
@click.option("--alpha", type=Finite(0.0, 10.0), default=0.75, show_default=True, help="NNN bias weight (0-10).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto",
              show_default=True, help="auto: faiss-gpu if faiss has GPUs, torch if CUDA, else faiss-cpu.")
@click.option("--where", default=None, help="SQL filter over the metadata columns, e.g. \"year >= 2020 AND "
                                          "folder = 'trips'\".")
@click.option("--dedup", type=Finite(0.0, 1.0), is_flag=False, flag_value=DEDUP, default=None,
              help=f"Collapse near-duplicates (cosine >= THRESHOLD; --dedup alone: {DEDUP}).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def search(index, text, image, k, target, rerank, candidates, lam, alpha, backend, where, dedup, as_json):
    """Search INDEX with TEXT (or --image PATH) and print the top-k rows."""
    from ..query import open_index

    if (text is None) == (image is None):
        raise click.UsageError("give a TEXT or --image PATH (one of them)")
    if text is not None and not text.strip():
        raise click.BadParameter("the query text is empty", param_hint="TEXT")
    if image is not None and not os.path.isfile(image):
        raise click.BadParameter(f"{image} is not a file", param_hint="--image")
    idx = open_index(index, "auto", backend=backend)
    try:
        rows = idx.query(text=text, image=image, k=k, target=target, rerank=rerank, candidates=candidates,
                         lam=lam, alpha=alpha, where=where, dedup=dedup)[0]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False, default=str))
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'id':>7}  {'key':<30}  caption")
    for i, r in enumerate(rows, 1):
        click.echo(f"{i:>4}  {r['score']:8.4f}  {r['id']:>7}  {str(r['key'])[:30]:<30}  {('' if r['caption'] is None else str(r['caption']))[:80]}")
