"""The service behind the HTTP routes, free of any web framework: the opened indexes, the
micro-batched search (``batching``), cached classifiers, and the errors routes turn into statuses.

Search requests are micro-batched: the texts/images queued within a few ms are encoded in one
forward per index and searched in one call per parameter group.
"""
from __future__ import annotations

import base64
import binascii
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..corpus.images import DEFAULT_MAX_PIXELS
from ..query.partial import collect_missing
from ..query.spec import QuerySpec, keywords_of, rows, run, search_options
from .admin import Reloader
from .batching import MicroBatcher
from .decoding import ImageDecoder
from .startup import ModelLoading

log = logging.getLogger("retrieval.serve")
MAX_K = 10_000
MAX_ID = 2**63 - 1  # ids are int64: larger ones are a 422, never an overflow
MAX_BODY = 16 << 20
WEB = Path(__file__).parent / "web"


class HTTPError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Query:
    """One search request, validated (``spec``, its min_score resolved to a number), waiting in the batcher."""

    index: str
    spec: QuerySpec
    image: Any = None              # preprocessed image tensor (the spec's image query)
    vector: Optional[np.ndarray] = None
    raw: bool = False              # answer (scores, ids) arrays instead of result rows
    missing: tuple = ()            # shards a sharded search left out (set by the batch)

    @property
    def k(self) -> int:
        return self.spec.k

    def group(self) -> tuple:
        """Queries searched in one call: vector queries of one index with the same options; every
        keyword or example query alone."""
        s = self.spec
        if s.kind != "vector" or s.rerank == "comclip":
            return ("alone", id(self))
        return (self.index, tuple(sorted(search_options(s).items())), s.hybrid, s.min_score)


class Service:
    """The indexes, their models, the search batcher and cached classifiers."""

    def __init__(self, indexes: dict, max_batch: int = 64, max_wait_ms: float = 4.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, decode_budget: Optional[int] = None,
                 write_token: Optional[str] = None, reload_interval: float = 0.0,
                 image_roots: Sequence[str] = (), models: Optional[ModelLoading] = None):
        if not indexes:
            raise ValueError("no indexes to serve")
        self.write_token = write_token
        self.reloader = Reloader(indexes, reload_interval)
        for name, idx in indexes.items():
            if idx.clip is None:
                raise ValueError(f"index {name!r} was opened without its model")
        self.indexes = indexes
        self.models = models or ModelLoading()   # full models loading in the background (``startup``)
        self.decoder = ImageDecoder(max_pixels, decode_budget)
        self.batcher = MicroBatcher(self.run_batch, max_batch, max_wait_ms, name="search-batcher")
        self._classifiers: OrderedDict = OrderedDict()
        self.image_roots = [str(r) for r in image_roots]
        for name, idx in indexes.items():
            warn_outside_roots(name, idx, self.image_roots)

    def item_image(self, name: str, row: dict) -> tuple[bytes, str]:
        """(bytes, media type) of a result row's source image under the image-root rule
        (``corpus.items``); HTTPError 404 (none there) or 403 (refused), naming the reason."""
        from ..corpus.items import ItemImageError, item_image

        try:
            return item_image(self.indexes[name].manifest["corpus"], row.get("image_path") or "", self.image_roots)
        except ItemImageError as e:
            raise HTTPError(e.status, str(e)) from None

    def index(self, name: Optional[str]):
        if name is None:
            return next(iter(self.indexes.items()))
        if not isinstance(name, str):
            raise HTTPError(400, f"the index name must be a string, got {type(name).__name__}")
        if name not in self.indexes:
            raise HTTPError(404, f"unknown index {name!r}; serving: {', '.join(self.indexes)}")
        return name, self.indexes[name]

    def full_model(self, name: str) -> None:
        """Once index ``name`` has its full model, not only a text tower (``startup``); else HTTPError 503."""
        why = self.models.wait(name)
        if why is not None:
            raise HTTPError(503, why)

    def decode_image(self, data: bytes, name: str) -> Any:
        """Preprocessed tensor of an uploaded image for index ``name`` (400 if unreadable, 413 if over
        the pixel limit); concurrent decodes share one pixel budget. Waits for the full model."""
        from ..errors import ItemError

        self.full_model(name)
        try:
            return self.decoder.decode(bytes(data), self.indexes[name].clip.preprocess)
        except ItemError as e:
            if e.stage == "pixels":
                raise HTTPError(413, f"image too large: {e.reason}") from None
            raise HTTPError(400, f"not a readable image: {e.reason}") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is the client's bad input
            raise HTTPError(400, f"not a readable image: {type(e).__name__}") from None

    # ---- the batched search -----------------------------------------------------------------
    def run_batch(self, queries: list[Query]) -> list:
        for name in {q.index for q in queries}:
            idx = self.indexes[name]
            texts = [q for q in queries if q.index == name and q.spec.kind == "vector" and q.spec.text is not None]
            if texts:
                for q, v in zip(texts, idx.encode_texts([q.spec.text for q in texts])):
                    q.vector = v
            images = [q for q in queries if q.index == name and q.image is not None]
            if images:  # torch only when images are encoded: embedding and item queries never load it
                import torch

                from ..embed import Encoder

                vecs = Encoder(idx.clip).images(torch.stack([q.image for q in images]))
                for q, v in zip(images, vecs):
                    q.vector = v
        out: list = [None] * len(queries)
        groups: dict[tuple, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.group(), []).append(i)
        for members in groups.values():
            first = queries[members[0]]
            name, spec, idx = first.index, first.spec, self.indexes[first.index]
            with collect_missing() as missing:
                if spec.kind != "vector" or spec.rerank == "comclip":
                    scores, ids = run(idx, spec)
                else:
                    qs = np.stack([queries[i].vector for i in members]).astype(np.float32)
                    words = [keywords_of(queries[i].spec, 1)[0] for i in members] if spec.hybrid else None
                    scores, ids = idx.search(qs, max(queries[i].k for i in members), text_match=words,
                                             min_score=spec.min_score, **search_options(spec))
            missed = tuple(sorted(missing))
            for row, i in enumerate(members):
                q = queries[i]
                q.missing = missed
                if q.raw:
                    keep = ids[row, :q.k] >= 0
                    out[i] = (scores[row, :q.k][keep], ids[row, :q.k][keep])
                else:
                    out[i] = self._rows(name, idx, q, scores[row, :q.k], ids[row, :q.k])
        return out

    @staticmethod
    def _rows(name: str, idx, q: Query, scores: np.ndarray, ids: np.ndarray) -> list[dict]:
        """``query.spec.rows`` as JSON: the image URL added, embeddings as rounded lists."""
        out = []
        for r in rows(idx, q.spec, scores[None], ids[None])[0]:
            r["image_url"] = f"/items/{name}/{r['id']}/image"
            if "embedding" in r:
                r["embedding"] = [round(float(x), 6) for x in r.pop("embedding")]
            out.append(r)
        return out

    # ---- classification --------------------------------------------------------------------
    def classifier(self, name: str, classes: tuple, templates: tuple, neighbours: int, captions: int):
        from ..classify import Classifier

        key = (name, classes, templates, neighbours, captions)
        if key not in self._classifiers:
            while len(self._classifiers) >= 16:
                self._classifiers.popitem(last=False)
            self._classifiers[key] = Classifier(self.indexes[name], list(classes), list(templates), neighbours, captions)
        self._classifiers.move_to_end(key)
        return self._classifiers[key]

    def classify(self, name: str, tensors: list, classes: tuple, templates: tuple, method: str,
                 neighbours: int, captions: int) -> list[dict]:
        import torch

        from ..embed import Encoder

        self.full_model(name)
        clf = self.classifier(name, classes, templates, neighbours, captions)
        x = Encoder(self.indexes[name].clip).images(torch.stack(tensors))
        pred, nbr = clf.predict(x, method)
        return [r.as_dict() for r in clf.results([f"image {i}" for i in range(len(x))], pred, nbr,
                                                 with_captions=method != "image")]

    def start(self) -> None:
        self.batcher.start()
        self.reloader.start()

    def close(self) -> None:
        self.reloader.close()
        self.batcher.close()


def encode_image(service: Service, name: str, tensor) -> np.ndarray:
    """The embedding of one decoded image with index ``name``'s model."""
    import torch

    from ..embed import Encoder

    return Encoder(service.indexes[name].clip).images(torch.stack([tensor]))[0]


async def decoded(service: Service, data: bytes, name: str) -> Any:
    """``Service.decode_image`` off the event loop, once index ``name``'s full model is loaded: a
    request waiting for the model holds no worker thread (text queries need them meanwhile)."""
    from fastapi.concurrency import run_in_threadpool

    await service.models.loaded(name)
    return await run_in_threadpool(service.decode_image, data, name)


async def http_example(service: Service, name: str, e) -> dict:
    """One HTTP example as ``Index.examples`` takes it; an image is decoded under the server's pixel
    limit and budget and encoded here (off the event loop), a key/id/text/embedding passed on."""
    from fastapi.concurrency import run_in_threadpool

    if e.image_base64 is None:
        return {f: getattr(e, f) for f in ("key", "id", "text", "embedding") if getattr(e, f) is not None}
    tensor = await decoded(service, b64_image(e.image_base64), name)
    return {"embedding": await run_in_threadpool(encode_image, service, name, tensor)}


def warn_outside_roots(name: str, index, extra_roots: Sequence[str]) -> int:
    """Log once, at start, how many of ``index``'s rows point outside its image roots (their images
    are refused); returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..corpus.items import image_roots, outside_roots

    corpus = index.manifest["corpus"]
    bad = 0
    for s in index.shards:
        path = index.folder / s["files"]["metadata"]
        if "image_path" in pq.ParquetFile(path).schema_arrow.names:
            col = pq.read_table(path, columns=["image_path"]).column("image_path")
            bad += outside_roots(corpus, pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], pa.string()),
                                 extra_roots)
    if bad:
        roots = ", ".join(map(str, image_roots(corpus, extra_roots))) or "none"
        log.warning("index %r: %d row(s) point outside its image roots (%s); their images are not served "
                    "(serve --image-root DIR adds a root)", name, bad, roots)
    return bad


def rerank_methods(index, compositional: bool = True) -> list[str]:
    """The rerank methods ``index`` can serve: every method but clip and comclip reads stored bias
    offsets; comclip reads the candidates' images (``compositional``: list it when it can run)."""
    from ..query.comclip import missing_extra, refusal

    return ["clip"] + (["bsap", "hybrid", "nnn"] if "bias" in index.manifest else []) + \
        (["comclip"] if compositional and index.clip is not None and refusal(index.manifest) is None
         and missing_extra() is None else [])


def embedding_vector(values: Any, dim: int) -> Optional[np.ndarray]:
    """``values`` as a float32 [dim] query vector (not normalised), or None when they are not
    ``dim`` finite numbers, not all zero."""
    try:
        with np.errstate(over="ignore"):  # a finite float64 beyond float32 becomes inf: refused below
            v = np.asarray(values, np.float32)
    except (TypeError, ValueError):
        return None
    if v.shape != (dim,) or not np.isfinite(v).all() or not np.any(v):
        return None
    return v


def b64_image(text: str) -> bytes:
    """Decode base64 (optionally a data: URL); 400 on bad input."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "image_base64 is not valid base64") from None
    if not data:
        raise HTTPError(400, "image_base64 is empty")
    return data


def comclip_options(body, image_roots: tuple):
    """ComCLIP's options of a search body (its weighting, temperature and the text's parse); HTTPError
    422 for a parse that is not in ComCLIP's shape."""
    from ..methods.parse import from_json
    from ..query.comclip import ComclipOptions

    parses = None
    if body.parse is not None:
        if not isinstance(body.text, str):
            raise HTTPError(422, "parse goes with a text query")
        try:
            parses = {body.text: from_json(body.parse)}
        except ValueError as e:
            raise HTTPError(422, f"parse: {e}") from None
    return ComclipOptions(body.weighting, body.temperature, parses=parses, image_roots=image_roots)
