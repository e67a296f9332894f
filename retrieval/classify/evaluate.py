"""``retrieval eval``: every method side by side.

- Retrieval: recall@k for text→image and image→text over a captioned index, using its own
  image–caption rows as ground truth (row i's caption embedding should find row i's image and
  vice versa), or a metadata label column, or external query embeddings with labels; one row per
  rerank method. Only stored embeddings are used: no model is needed, except for ``comclip``
  (text→image only: it parses each row's caption and encodes its candidates' sub-images).
- Classification: accuracy of zero-shot CLIP, X-MoRe and its ablations on a labelled image set,
  with the index as the external caption bank. Images are embedded and neighbours retrieved once;
  every method is computed from the same arrays.
Seeded: the query sample (``max_queries``) and the stream order are reproducible.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from ..methods.rerank import METHODS as RERANK_METHODS
from ..methods.xmore import StreamNormaliser, mix

CLASSIFY_ROWS = (("zero-shot CLIP (image only)", "image", "batch"), ("captions only", "caption", "batch"),
                 ("fixed 0.5/0.5", "fixed", "batch"), ("X-MoRe (batch-mean weights)", "xmore", "batch"),
                 ("X-MoRe (official stream weights)", "xmore", "stream"))


def recall_at(ids: np.ndarray, truth: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose true id is among the first k of ``ids`` [n, >=max(ks)]."""
    hit_rank = np.where(ids == truth[:, None], np.arange(ids.shape[1])[None, :], ids.shape[1]).min(1)
    return {k: float(np.mean(hit_rank < k)) for k in ks}


def _labels(index, ids: np.ndarray, column: str) -> np.ndarray:
    """The ``column`` values of global ``ids`` as strings (None when missing)."""
    rows = index.metadata(ids)
    if rows and column not in rows[0]:
        raise ValueError(f"no metadata column {column!r}; columns: {', '.join(c for c in rows[0] if c != 'id')}")
    return np.array([None if r[column] is None else str(r[column]) for r in rows], dtype=object)


def hit_curve(ids: np.ndarray, relevant) -> np.ndarray:
    """[max k]: fraction of queries with a relevant item among their first k results, k = 1..K.
    ``relevant(ids) -> bool [n, K]``."""
    rel = relevant(ids) & (ids >= 0)
    first = np.where(rel.any(1), rel.argmax(1), ids.shape[1])
    return np.array([float(np.mean(first < k)) for k in range(1, ids.shape[1] + 1)])


def eval_retrieval(index, ks: Sequence[int] = (1, 5, 10), methods: Sequence[str] = RERANK_METHODS,
                   max_queries: Optional[int] = None, seed: int = 0, label_column: Optional[str] = None,
                   queries: Optional[tuple] = None) -> list[dict]:
    """Rows {direction, method, R@k..., curve, seconds} per direction and rerank method.

    Default: the index's own captioned rows, both directions; row i's caption must find row i's
    image and vice versa. ``label_column``: a result is relevant when its value in that metadata
    column equals the query row's (e.g. a class: duplicate captions stop being ambiguous).
    ``queries``: (embeddings [n, d], labels [n], target) searched against ``target`` items, relevant
    when their ``label_column`` equals the query's label. Needs no model: stored embeddings only.
    """
    K = max(ks)
    has_bias = "bias" in index.manifest
    plans = []
    if queries is not None:
        emb, qlabels, target = queries
        if label_column is None:
            raise ValueError("external queries need label_column (what makes a result relevant)")
        qlabels = np.array([str(x) for x in qlabels], dtype=object)
        if len(qlabels) != len(emb):
            raise ValueError(f"{len(qlabels)} query labels for {len(emb)} query embeddings")
        plans.append((f"queries→{target}", np.asarray(emb, np.float32), target, qlabels))
    else:
        rows = index.ids("text")  # live items with a caption: each is a query in both directions
        if max_queries is not None and max_queries < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_queries, replace=False))
        own = _labels(index, rows, label_column) if label_column else rows
        for direction, source, target in (("text→image", "text", "image"), ("image→text", "image", "text")):
            plans.append((direction, index.embeddings(rows, source), target, own))
    out = []
    for direction, q, target, truth in plans:
        for m in methods:
            if m == "comclip" and (direction != "text→image" or queries is not None):
                continue
            if m not in ("clip", "comclip") and not has_bias:
                continue
            t = time.perf_counter()
            if m == "comclip":
                ids = comclip_ids(index, rows, K)
            else:
                _, ids = index.search(q, K, target=target, rerank=m)
            seconds = time.perf_counter() - t
            if label_column:
                flat = ids.ravel()
                lab = np.full(flat.shape, None, dtype=object)
                ok = flat >= 0
                lab[ok] = _labels(index, flat[ok], label_column)
                curve = hit_curve(ids, lambda _: lab.reshape(ids.shape) == truth[:, None])
            else:
                curve = hit_curve(ids, lambda i: i == truth[:, None])
            out.append({"direction": direction, "method": m, **{f"R@{k}": round(float(curve[k - 1]), 4) for k in ks},
                        "queries": int(len(q)), "seconds": round(seconds, 3), "curve": [round(float(v), 4) for v in curve]})
    return out


def comclip_ids(index, rows: np.ndarray, k: int) -> np.ndarray:
    """Top-k ids of each row's caption (its metadata ``caption``), CLIP's top max(k, 10) reranked by ComCLIP."""
    from ..query.spec import QuerySpec, run

    texts = [r.get("caption") for r in index.metadata(rows)]
    out = np.full((len(rows), k), -1, np.int64)
    for i, text in enumerate(texts):
        if isinstance(text, str) and text.strip():
            out[i] = run(index, QuerySpec(text=text, k=k, rerank="comclip"))[1][0]
    return out


def eval_classification(classifier, paths: Sequence, labels: Sequence[str], batch_size: int = 64,
                        progress: bool = False, seed: int = 0) -> tuple[list[dict], dict]:
    """Accuracy rows per method on labelled images, plus a summary {images, skipped, errors, timings}."""
    index = {c: i for i, c in enumerate(classifier.classes)}
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise ValueError(f"labels not among the classes: {', '.join(unknown[:5])}")
    label_of = {str(p): lab for p, lab in zip(paths, labels)}
    errors: list = []
    t0 = time.perf_counter()
    got, embs = [], []
    for ps, e in classifier.embed_paths(list(paths), batch_size, progress, errors):
        got += ps
        embs.append(e)
    if not embs:
        raise ValueError(f"none of the {len(paths)} images could be read")
    x = np.concatenate(embs)
    y = np.array([index[label_of[p]] for p in got])
    t_embed = time.perf_counter() - t0
    t = time.perf_counter()
    p_img = classifier.image_probs(x)
    t_zero = time.perf_counter() - t
    t = time.perf_counter()
    p_cap, _ = classifier.caption_probs(x)
    t_retr = time.perf_counter() - t
    order = np.random.default_rng(seed).permutation(len(x))  # the stream variant sees a seeded order
    rows = []
    for name, method, norm in CLASSIFY_ROWS:
        if norm == "stream":
            pred = mix(p_img[order], p_cap[order], method, norm, stream=StreamNormaliser())
            correct = pred.labels == y[order]
        else:
            pred = mix(p_img, p_cap, method, norm)
            correct = pred.labels == y
        rows.append({"method": name, "accuracy": round(float(correct.mean()), 4),
                     "mean_w_img": round(float(pred.w_img.mean()), 4), "mean_w_cap": round(float(pred.w_cap.mean()), 4)})
    summary = {"images": int(len(x)), "skipped": len(errors), "errors": [{"path": p, "reason": r} for p, r in errors[:20]],
               "classes": len(classifier.classes), "neighbours": classifier.neighbours, "captions": classifier.captions,
               "seconds_embed": round(t_embed, 3), "seconds_zero_shot": round(t_zero, 4),
               "seconds_retrieval_step": round(t_retr, 3)}
    return rows, summary


def format_table(rows: list[dict], title: str) -> str:
    """A plain aligned text table of ``rows`` (same keys in each)."""
    if not rows:
        return f"{title}\n  (no rows)"
    cols = [c for c in rows[0] if c != "curve"]  # the per-k curve goes to --plot / --json
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  " + "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([title, line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])
