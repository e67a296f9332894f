"""``retrieval search``: query an index from the command line."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from ..methods.comclip import WEIGHTINGS
from ..methods.rerank import METHODS as RERANK_METHODS
from ..query.backends import BACKENDS
from ..query.examples import STRATEGIES
from ..query.fusion import FUSIONS
from ..methods.dedup import DEFAULT_THRESHOLD as DEDUP
from .common import POSITIVE, Finite


@click.command()
@click.argument("index", type=click.Path())
@click.argument("text", required=False)
@click.option("--image", "image", type=click.Path(), help="Search with an image file instead of text.")
@click.option("--embedding", "embedding", type=click.Path(dir_okay=False), metavar="FILE.npy",
              help="Search with a query embedding saved by numpy.save ([d] or [1, d]; no model is loaded).")
@click.option("--k", type=POSITIVE, default=20, show_default=True, help="Results per query.")
@click.option("--target", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="Search among the corpus images or its captions.")
@click.option("--rerank", type=click.Choice(RERANK_METHODS + ("comclip",)), default="clip", show_default=True,
              help="clip cosine; bsap, hybrid (BSAP-H) and nnn exact over the whole corpus (or over --candidates); "
                   "comclip: a text query's top --candidates (10) by ComCLIP's sub-image matching (slow: reads images).")
@click.option("--candidates", type=POSITIVE, default=None, help="Rerank CLIP's top N instead of searching exactly.")
@click.option("--weighting", type=click.Choice(WEIGHTINGS), default="sum", show_default=True,
              help="comclip: the parts' weights, s_k / sum s (its released code) or softmax(s_k / --temperature).")
@click.option("--temperature", type=Finite(1e-6, 1e6), default=1.0, show_default=True,
              help="comclip: the softmax temperature of --weighting softmax.")
@click.option("--parses", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help='comclip: captions\' parses in ComCLIP\'s JSON shape, {caption: {"objects": ..., "connections": ...}} '
                   "(e.g. from an LLM); default: the built-in parser.")
@click.option("--regions", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="comclip: dense-caption boxes, {image key: {caption: [[x1, y1, x2, y2], ...]}} (GRiT's output); "
                   "default: selective-search proposals.")
@click.option("--max-boxes", type=click.IntRange(0, 64), default=16, show_default=True,
              help="comclip: region proposals per image.")
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
@click.option("--text-match", default=None, metavar="WORDS",
              help='Keyword search (BM25) over the captions and text columns: words, "phrases", prefix*, AND/OR/NOT. '
                   "Alone: keyword results only; with --hybrid: the keywords fused with the CLIP search.")
@click.option("--hybrid", is_flag=True,
              help="Fuse the CLIP (or --rerank) ranking with the keyword ranking of --text-match (default: of TEXT). "
                   "Not --rerank hybrid, which is BSAP-H.")
@click.option("--fusion", type=click.Choice(FUSIONS), default="rrf", show_default=True,
              help="rrf: reciprocal rank fusion (k=60); weighted: min-max normalised scores, --keyword-weight.")
@click.option("--keyword-weight", type=Finite(0.0, 1.0), default=None,
              help="With --fusion weighted: the keyword side's weight (default 0.5).")
@click.option("--like", "like", multiple=True, metavar="KEY|FILE",
              help="A positive example (repeatable): an image file, else the key of an item of INDEX. With TEXT or "
                   "--image, that query is one more positive.")
@click.option("--unlike", "unlike", multiple=True, metavar="KEY|FILE", help="A negative example (repeatable).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="average_vector", show_default=True,
              help="How examples combine (Qdrant's): average_vector (2·mean(like) - mean(unlike), any --rerank), "
                   "best_score, sum_scores.")
@click.option("--min-score", default=None, metavar="S|auto",
              help="Drop results scoring below S (the method's own score), or 'auto': the floor `retrieval bias` "
                   "recorded (what an unrelated item scores 1 %% of the time).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def search(index, text, image, embedding, k, target, rerank, candidates, lam, alpha, backend, where, dedup, text_match, hybrid,
           fusion, keyword_weight, like, unlike, strategy, min_score, weighting, temperature, parses, regions, max_boxes,
           as_json):
    """Search INDEX with TEXT, --image PATH, --like/--unlike examples, or --text-match WORDS alone, and
    print the top-k rows."""
    from ..query import open_index
    from ..query.spec import AUTO, QuerySpec

    if text is not None and not text.strip():
        raise click.BadParameter("the query text is empty", param_hint="TEXT")
    if image is not None and not os.path.isfile(image):
        raise click.BadParameter(f"{image} is not a file", param_hint="--image")
    if min_score not in (None, AUTO):
        try:
            min_score = float(min_score)
        except ValueError:
            raise click.BadParameter(f"{min_score!r} is not a number or 'auto'", param_hint="--min-score") from None
        if not math.isfinite(min_score):
            raise click.BadParameter("must be finite", param_hint="--min-score")
    query_embedding = None if embedding is None else read_embedding(embedding)
    examples = lambda items: tuple({"image": Path(x)} if os.path.isfile(x) else {"key": x} for x in items)  # noqa: E731
    spec = QuerySpec(text=text, image=image, embedding=query_embedding, k=k, target=target, rerank=rerank,
                     candidates=candidates, lam=lam, alpha=alpha, where=where, dedup=dedup, text_match=text_match, hybrid=hybrid, fusion=fusion,
                     keyword_weight=keyword_weight, positive=examples(like), negative=examples(unlike),
                     strategy=strategy, min_score=min_score)
    try:
        if rerank == "comclip":
            spec.comclip = comclip_options(weighting, temperature, parses, regions, max_boxes)
        spec.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    files = any(os.path.isfile(x) for x in like + unlike)
    if text is not None and image is None and not files and rerank != "comclip":  # the text tower alone
        from ..embed.text_cache import text_model

        idx = open_index(index, None, backend=backend)
        idx.attach_model(text_model(idx.manifest["model"]))
    else:
        needs_model = text is not None or image is not None or files
        idx = open_index(index, "auto" if needs_model else None, backend=backend)
    try:
        rows = idx.query(**{f: getattr(spec, f) for f in spec.__dataclass_fields__ if f != "extra"})[0]
    except (ValueError, LookupError) as e:
        raise click.BadParameter(str(e)) from None
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False, default=str))
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'id':>7}  {'key':<30}  caption")
    for i, r in enumerate(rows, 1):
        click.echo(f"{i:>4}  {r['score']:8.4f}  {r['id']:>7}  {str(r['key'])[:30]:<30}  {('' if r['caption'] is None else str(r['caption']))[:80]}")


def read_embedding(path: str):
    """A query embedding from a ``.npy`` file (numbers only, no pickles); BadParameter otherwise."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise click.BadParameter(f"{path} is not a .npy file (write one with numpy.save)",
                                         param_hint="--embedding")
        q = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise click.BadParameter(f"cannot read {path} as a .npy array ({type(e).__name__}: {str(e)[:120]})",
                                 param_hint="--embedding") from None
    if q.dtype.kind not in "fiu" or q.ndim not in (1, 2) or (q.ndim == 2 and q.shape[0] != 1) or q.size == 0:
        raise click.BadParameter(f"{path} holds a {q.dtype} array of shape {q.shape}; expected one vector, [d] or [1, d]",
                                 param_hint="--embedding")
    return q.reshape(1, -1).astype(np.float32)


def comclip_options(weighting: str, temperature: float, parses, regions, max_boxes: int):
    """ComCLIP's options from the command line (ValueError, one line, for an unreadable file)."""
    from ..query.comclip import ComclipOptions, load_parses, load_regions

    return ComclipOptions(weighting, temperature, max_boxes, parses=load_parses(parses) if parses else None,
                          regions=load_regions(regions) if regions else None)
