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
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..corpus.items import no_image_files, row_picture
from ..corpus.regions import MAX_BOXES, Box, given_boxes
from ..corpus.subimages import black_outside, predicate_image
from ..embed.regions import Regions, encode_raw, image_regions
from ..errors import UsageError
from ..methods.comclip import WEIGHTINGS, comclip_score, ground
from ..methods.parse import Parse, parse
from ..store.regions import read_arrays, row_regions

log = logging.getLogger(__name__)
CANDIDATES = 10
MAX_CANDIDATES = 32  # each candidate's image is read and encoded per region: a bound on one query's work


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


def missing_extra() -> Optional[str]:
    """What to install when the parser or the region proposals are not importable, else None."""
    from importlib.util import find_spec

    gone = [name for name, mod in (("textblob", "textblob"), ("opencv-contrib-python-headless", "cv2"))
            if find_spec(mod) is None]
    return f"comclip needs {' and '.join(gone)}: pip install 'retrieval[comclip]'" if gone else None


def refusal(manifest: dict) -> Optional[str]:
    """Why ``manifest``'s index cannot run comclip (one line), or None."""
    why = no_image_files(manifest.get("corpus") or {})
    return None if why is None else f"comclip reranks with the candidates' images, and this index has none: {why}"


def parts_of(p: Parse) -> tuple[list[str], list[tuple[Optional[int], Optional[int]]]]:
    """The texts scored against sub-images (entities, then each relation's verb) and, per relation,
    its (subject, object) entity positions (None: not an entity of the parse)."""
    names = [e.name for e in p.entities]
    rels = [r for r in p.relations if r.verb]
    pos = [(names.index(r.subject) if r.subject in names else None,
            names.index(r.object) if r.object in names else None) for r in rels]
    return [e.text for e in p.entities] + [r.verb for r in rels], pos


class ComclipScorer:
    """ComCLIP's score of images for a text with one model (no index: the benchmark uses it alone)."""

    def __init__(self, clip, options: ComclipOptions = ComclipOptions()):
        from ..embed import Encoder

        self.clip, self.options, self.encoder = clip, options.check(), Encoder(clip)

    def parse(self, text: str) -> Parse:
        given = (self.options.parses or {}).get(text)
        return given if given is not None else parse(text)

    def regions(self, images: Sequence, given: Sequence = ()) -> list[Optional[Regions]]:
        """The regions of PIL images (None for None): ``given`` boxes where not None, else proposals."""
        return image_regions(self.clip, images, given, self.options.max_boxes)

    def encode(self, images: list) -> np.ndarray:
        return encode_raw(self.clip, images)

    def scores(self, text: str, query: np.ndarray, images: Sequence[Callable], regions: Sequence[Optional[Regions]],
               fallback: np.ndarray) -> np.ndarray:
        """ComCLIP's score of each image for ``text`` (``query``: its embedding). ``images``: per image a
        callable giving it (PIL, or None when unreadable; called only when a predicate's overlay must be
        drawn); ``fallback`` (CLIP's scores) where the caption has no part, there are no regions, the
        image is needed and unreadable, or the weights are undefined."""
        texts, rel_pos = parts_of(self.parse(text))
        out = np.asarray(fallback, np.float64).copy()
        if not texts or not len(regions):
            return out.astype(np.float32)
        parts = self.encoder.texts(texts, normalise=False)
        n_ent = len(texts) - len(rel_pos)
        pending, subs = [], {}                         # (image, relation, overlay); image -> (entities, predicates)
        for i, reg in enumerate(regions):
            if reg is None:
                continue
            at = ground(parts[:n_ent], reg.embs, reg.whole, self.options.margin)
            pred, draws = [], []
            for rel, (s_pos, o_pos) in enumerate(rel_pos):
                js = (at[s_pos] if s_pos is not None else -1, at[o_pos] if o_pos is not None else -1)
                pred.append(reg.whole if min(js) < 0 else reg.embs[js[0]] if js[0] == js[1] else None)
                if pred[-1] is None:
                    draws.append((rel, js))
            if draws:
                image = images[i]()
                if image is None:
                    continue
                pending += [(i, rel, predicate_image(image, black_outside(image, reg.boxes[s]),
                                                     black_outside(image, reg.boxes[o]))) for rel, (s, o) in draws]
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


class ComclipReranker:
    """ComCLIP scores of candidate rows for text queries, with ``index``'s model and images, and its
    stored regions where ``retrieval regions`` wrote them."""

    def __init__(self, index, options: ComclipOptions = ComclipOptions()):
        why = refusal(index.manifest)
        if why:
            raise ValueError(why)
        if index.clip is None:
            raise ValueError("comclip encodes sub-images: open the index with its model (clip=...)")
        why = missing_extra()
        if why:
            raise UsageError(why)
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
        loaders = [_Loader(self, row) for row in rows]
        given = self.scorer.options.regions
        regions = [None if given is not None else r for r in self.stored(ids)]
        todo = [i for i, r in enumerate(regions) if r is None]
        if todo:
            boxes = [given_boxes(given, rows[i]) for i in todo]
            for i, r in zip(todo, self.scorer.regions([loaders[i]() for i in todo], boxes)):
                regions[i] = r
        return self.scorer.scores(text, query, loaders, regions, clip_scores)

    def stored(self, ids: np.ndarray) -> list[Optional[Regions]]:
        """The regions ``retrieval regions`` stored for ``ids`` (None where a shard or row has none)."""
        shard_set = self.index.snapshot.shard_set
        sh, local = shard_set.locate(ids)
        out: list[Optional[Regions]] = []
        for k, row in zip(sh, local):
            entry = shard_set.shards[int(k)].get("regions")
            found = row_regions(*read_arrays(self.index.folder, entry), int(row)) if entry else None
            out.append(None if found is None else Regions(*found))
        return out


class _Loader:
    """A candidate's image, read (once) when first asked for; None (logged) when it cannot be read."""

    def __init__(self, reranker: ComclipReranker, row: dict):
        self.reranker, self.row, self.image, self.done = reranker, row, None, False

    def __call__(self):
        if not self.done:
            self.done = True
            self.image = row_picture(self.reranker.index.manifest["corpus"], self.row,
                                     self.reranker.scorer.options.image_roots)
            if self.image is None:
                log.warning("comclip: item %s keeps its CLIP score (its image cannot be read)", self.row.get("key"))
        return self.image


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
