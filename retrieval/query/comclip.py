"""``rerank="comclip"``: ComCLIP (Jiang et al., NAACL 2024) over CLIP's top candidates of a text query.

Per query: the caption is parsed (``methods.parse``, or a parse given in ComCLIP's JSON shape) into
entities and subject–verb–object relations; the parts' texts are encoded (raw, not normalised). Per
candidate: its image is read from the index's image roots; its regions are boxes from a dense
captioner (``regions``: image key or path -> boxes) or selective-search proposals; the whole image
and each box's masked image are encoded raw; each entity is grounded to its best box (or the whole
image, ``methods.comclip.ground``); each relation's predicate image is the overlay of its subject's
and object's masked images; the score is ``methods.comclip.comclip_score``. A caption with no part
keeps CLIP's order; a candidate whose image cannot be read keeps its CLIP cosine (logged).
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from ..corpus.images import decode_image
from ..corpus.items import ItemImageError, item_image
from ..corpus.regions import MAX_BOXES, Box, proposals
from ..corpus.subimages import black_outside, overlay
from ..errors import ItemError
from ..methods.comclip import WEIGHTINGS, comclip_score, ground
from ..methods.parse import Parse, parse

log = logging.getLogger(__name__)
CANDIDATES = 10
IMAGE_SOURCES = ("folder", "manifest", "clip-retrieval", "webdataset")


@dataclass(frozen=True)
class ComclipOptions:
    weighting: str = "sum"
    temperature: float = 1.0
    max_boxes: int = MAX_BOXES
    margin: float = 0.0
    parses: Optional[Mapping[str, Parse]] = None
    regions: Optional[Mapping[str, Sequence[Box]]] = None
    image_roots: tuple = field(default=())

    def check(self) -> "ComclipOptions":
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not 0 <= self.max_boxes <= 64:
            raise ValueError(f"max_boxes must be in [0, 64], got {self.max_boxes}")
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin}")
        return self


def refusal(manifest: dict) -> Optional[str]:
    """Why ``manifest``'s index cannot run comclip (one line), or None."""
    corpus = manifest.get("corpus") or {}
    kind = corpus.get("type")
    if kind not in IMAGE_SOURCES or (kind == "clip-retrieval" and not corpus.get("image_root")):
        how = "built from embeddings" if kind == "embeddings" else \
            "imported without --image-root" if kind == "clip-retrieval" else f"from a {kind!r} source"
        return f"comclip reranks with the candidates' images, and this index ({how}) has no image files"
    return None


def parts_of(p: Parse) -> tuple[list[str], list[tuple[Optional[int], Optional[int]]]]:
    """The texts scored against sub-images (entities, then each relation's verb) and, per relation,
    its (subject, object) entity positions (None: not an entity of the parse)."""
    names = [e.name for e in p.entities]
    rels = [r for r in p.relations if r.verb]
    pos = [(names.index(r.subject) if r.subject in names else None,
            names.index(r.object) if r.object in names else None) for r in rels]
    return [e.text for e in p.entities] + [r.verb for r in rels], pos


@dataclass(frozen=True)
class Regions:
    """An image's boxes and the raw embeddings of the whole image [d] and of each box's masked image [b, d]."""
    boxes: list
    whole: np.ndarray
    embs: np.ndarray


class ComclipScorer:
    """ComCLIP's score of images for a text with one model (no index: the benchmark uses it alone)."""

    def __init__(self, clip, options: ComclipOptions = ComclipOptions()):
        from ..embed import Encoder

        self.clip, self.options, self.encoder = clip, options.check(), Encoder(clip)

    def parse(self, text: str) -> Parse:
        given = (self.options.parses or {}).get(text)
        return given if given is not None else parse(text)

    def regions(self, images: Sequence, given: Sequence = ()) -> list[Optional[Regions]]:
        """The :class:`Regions` of each image (None for None), from ``given`` boxes where not None,
        else selective-search proposals (one search per core: OpenCV releases the GIL)."""
        found = list(given) or [None] * len(images)
        todo = [i for i, (b, im) in enumerate(zip(found, images)) if b is None and im is not None]
        if todo:
            with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
                for i, b in zip(todo, pool.map(lambda i: proposals(images[i], self.options.max_boxes), todo)):
                    found[i] = b
        batch, spans = [], []
        for bx, image in zip(found, images):
            spans.append(None if image is None else (len(batch), list(bx)))
            if image is not None:
                batch += [image] + [black_outside(image, b) for b in bx]
        embs = self.encode(batch) if batch else None
        return [None if span is None else Regions(span[1], embs[span[0]], embs[span[0] + 1:span[0] + 1 + len(span[1])])
                for span in spans]

    def scores(self, text: str, query: np.ndarray, images: Sequence, regions: Sequence[Optional[Regions]],
               fallback: np.ndarray) -> np.ndarray:
        """ComCLIP's score of each image for ``text`` (``query``: its embedding); ``fallback`` (CLIP's
        scores) where the caption has no part, an image is None or the weights are undefined."""
        texts, rel_pos = parts_of(self.parse(text))
        out = np.asarray(fallback, np.float64).copy()
        if not texts or not len(images):
            return out.astype(np.float32)
        parts = self.encoder.texts(texts, normalise=False)
        n_ent = len(texts) - len(rel_pos)
        pending, subs = [], {}                         # (image, relation, overlay image); image -> parts
        for i, (image, reg) in enumerate(zip(images, regions)):
            if image is None or reg is None:
                continue
            at = ground(parts[:n_ent], reg.embs, reg.whole, self.options.margin)
            pred = []
            for rel, (s_pos, o_pos) in enumerate(rel_pos):
                js = (at[s_pos] if s_pos is not None else -1, at[o_pos] if o_pos is not None else -1)
                if min(js) < 0:
                    pred.append(reg.whole)
                elif js[0] == js[1]:
                    pred.append(reg.embs[js[0]])
                else:
                    pred.append(None)
                    pending.append((i, rel, overlay([black_outside(image, reg.boxes[js[1]]),
                                                     black_outside(image, reg.boxes[js[0]])])))
            subs[i] = ([reg.embs[j] if j >= 0 else reg.whole for j in at], pred)
        if pending:
            for (i, rel, _), e in zip(pending, self.encode([p[2] for p in pending])):
                subs[i][1][rel] = e
        for i, (ent, pred) in subs.items():
            try:
                out[i] = comclip_score(regions[i].whole, np.stack(ent + pred), parts, query, self.options.weighting,
                                       self.options.temperature)
            except ValueError as e:                  # the parts' scores sum to zero: weights undefined
                log.warning("comclip: image %d of %r keeps its CLIP score (%s)", i, text[:60], e)
        return out.astype(np.float32)

    def encode(self, images: list) -> np.ndarray:
        """Raw (not normalised) embeddings of PIL images, 64 per forward."""
        import torch

        pre = self.clip.preprocess
        return np.concatenate([self.encoder.images(torch.stack([pre(im) for im in images[i:i + 64]]), normalise=False)
                               for i in range(0, len(images), 64)])


class ComclipReranker:
    """ComCLIP scores of candidate rows for text queries, with ``index``'s model and images."""

    def __init__(self, index, options: ComclipOptions = ComclipOptions()):
        why = refusal(index.manifest)
        if why:
            raise ValueError(why)
        if index.clip is None:
            raise ValueError("comclip encodes sub-images: open the index with its model (clip=...)")
        self.index, self.scorer = index, ComclipScorer(index.clip, options)

    def rerank(self, texts: Sequence[str], queries: np.ndarray, scores: np.ndarray, ids: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) of each query row's candidates (ids -1: none) by ComCLIP's score."""
        out_s = np.full((len(texts), k), -np.inf, np.float32)
        out_i = np.full((len(texts), k), -1, np.int64)
        for r, text in enumerate(texts):
            valid = ids[r] >= 0
            s = self.scores(text, queries[r], scores[r][valid], ids[r][valid])
            order = np.argsort(-s, kind="stable")[:k]
            out_s[r, :len(order)], out_i[r, :len(order)] = s[order], ids[r][valid][order]
        return out_s, out_i

    def scores(self, text: str, query: np.ndarray, clip_scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """ComCLIP's score of each candidate id for ``text`` (CLIP's where it cannot apply)."""
        if not parts_of(self.scorer.parse(text))[0] or not len(ids):
            return np.asarray(clip_scores, np.float32)
        rows = self.index.metadata(ids)
        images = [self._image(row) for row in rows]
        given = self.scorer.options.regions or {}
        boxes = [given.get(row.get("key"), given.get(row.get("image_path"))) for row in rows]
        return self.scorer.scores(text, query, images, self.scorer.regions(images, boxes), clip_scores)

    def _image(self, row: dict):
        try:
            data, _ = item_image(self.index.manifest["corpus"], row.get("image_path") or "",
                                 self.scorer.options.image_roots)
            return decode_image(data)[0]
        except (ItemImageError, ItemError) as e:
            reason = getattr(e, "reason", None) or str(e)
            log.warning("comclip: item %s keeps its CLIP score: its image cannot be read (%s)", row.get("key"), reason)
            return None


def _json_file(path, what: str):
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"{what} {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not JSON: {e}") from None


def load_parses(path) -> dict[str, Parse]:
    """``{caption: parse}`` from a JSON file, each parse in ComCLIP's shape (or, as its scripts save
    it, that JSON as a string)."""
    import json

    from ..methods.parse import from_json

    obj = _json_file(path, "parses file")
    if not isinstance(obj, dict):
        raise ValueError(f"parses file {path}: expected {{caption: {{\"objects\": ..., \"connections\": ...}}}}")
    out = {}
    for caption, p in obj.items():
        try:
            out[caption] = from_json(json.loads(p) if isinstance(p, str) else p)
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"parses file {path}, caption {caption[:60]!r}: {e}") from None
    return out


def load_regions(path) -> dict[str, list[Box]]:
    """``{image key or image path: boxes}`` from a JSON file of dense-caption outputs in ComCLIP's
    shape, ``{image: {caption: [[x1, y1, x2, y2], ...]}}``."""
    from ..corpus.regions import dense_caption_boxes

    obj = _json_file(path, "regions file")
    if not isinstance(obj, dict):
        raise ValueError(f"regions file {path}: expected {{image key: {{caption: [[x1, y1, x2, y2], ...]}}}}")
    try:
        return {str(k): dense_caption_boxes(v) for k, v in obj.items()}
    except ValueError as e:
        raise ValueError(f"regions file {path}: {e}") from None
