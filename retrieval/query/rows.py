"""Searches by texts, image paths or raw embeddings answered as result rows (metadata, score and,
when asked, the stored embedding): the convenience half of :class:`~retrieval.query.index.Index`."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .encode import encode_images, encode_texts
from .examples import ExampleNotFound, Examples, example_kind
from .spec import QuerySpec, rows, run
from .rerankers import Clip
from .searcher import check_k


class RowQueries:
    """Mixed into ``Index``: needs its ``clip``, ``snapshot``, ``search``, ``metadata`` and ``embeddings``."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.clip, texts)

    def encode_images(self, paths: list[str]) -> np.ndarray:
        return encode_images(self.clip, paths)

    def query(self, text: Optional[list[str]] = None, image: Optional[list[str]] = None,
              embedding: Optional[np.ndarray] = None, k: int = 10, target: str = "image",
              return_embeddings: bool = False, **options) -> list[list[dict]]:
        """Search with texts, image paths or raw embeddings; one list of result rows per query.

        ``options`` are :class:`~retrieval.query.spec.QuerySpec`'s: ``rerank``, ``candidates``, ``lam``,
        ``alpha``, ``where``, ``dedup``, ``captioned``, ``min_score`` (a number or 'auto');
        ``text_match`` (alone: keyword search) and ``hybrid`` (fused with the keyword ranking of
        ``text_match``, or of ``text``), ``fusion``, ``keyword_weight``; ``positive``, ``negative`` and
        ``strategy`` (example queries, ``query.examples``)."""
        spec = QuerySpec(text=text, image=image, embedding=embedding, k=k, target=target,
                         return_embeddings=return_embeddings, **options)
        return rows(self, spec, *run(self, spec))

    def keyword_search(self, texts: Union[str, Sequence[str]], k: int = 10, where: Optional[str] = None,
                       target: str = "image", captioned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (BM25 scores, global ids) per keyword query (``query.keyword``: words, "phrases",
        prefix*, AND/OR/NOT) over the captions and chosen text columns; ids -1 where fewer rows match.
        Deleted rows and rows ``where`` excludes are never returned."""
        check_k(k)
        texts = [texts] if isinstance(texts, str) else list(texts)
        snap = self.snapshot
        return snap.keywords.search(texts, int(k), snap.selection(target, where, captioned))

    def search_vectors(self, queries: np.ndarray, k: int = 10, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of L2-normalised ``queries`` [n, d] among live ``modality`` items."""
        snap = self.snapshot
        return snap.searcher.search(queries, k, modality, Clip(), snap.selection(modality))

    def check_where(self, where: str) -> None:
        """Evaluate (and cache) a ``where`` filter; FilterError (a ValueError) when it is invalid."""
        self.snapshot.filters.selection(where)

    def metadata(self, ids) -> list[dict]:
        """Metadata rows of live global ids, in order (only the Parquet row groups holding them are
        read); IndexError for an id that is not in the index or was deleted."""
        ok = self.is_live(ids)
        if not ok.all():
            raise IndexError(f"id {int(np.asarray(ids).ravel()[~ok][0])} is not in this index (or was deleted)")
        return [{c: v for c, v in row.items() if c != "_source"} for row in self.snapshot.meta.rows(ids)]

    def embeddings(self, ids, modality: str = "image") -> np.ndarray:
        """Stored (fp16) embeddings of global ``ids`` as float32 [..., d]."""
        return self.snapshot.shard_set.gather(ids, modality)

    def examples(self, positive, negative=(), strategy: str = "average_vector") -> Examples:
        """Positive and negative examples (``query.examples.example_kind``) as vectors: a row's stored
        image embedding for an id or key, the model's embedding of a text or an image, or a vector; a
        plain str is a key when the index holds it, else an image file when one exists, else a text."""
        import base64
        import os

        from ..store.masks import find_keys
        from .encode import normalised

        positive, negative = list(positive), list(negative or ())
        kinds = [example_kind(e) for e in positive + negative]
        named = [str(v) for k, v in kinds if k in ("key", "str")]
        found = find_keys(self.folder, self.manifest, named) if named else None  # one scan for every key
        key_ids = dict(zip(found.found, found.ids.tolist())) if found is not None else {}

        def one(kind, value) -> tuple[np.ndarray, Optional[int]]:
            if kind in ("key", "str"):
                if str(value) in key_ids:
                    return self.embeddings([key_ids[str(value)]], "image"), key_ids[str(value)]
                if kind == "key":
                    raise ExampleNotFound(f"no item with key {str(value)[:100]!r} in this index")
                kind = "image" if os.path.isfile(value) else "text"
            if kind == "id":
                if not self.is_live([value])[0]:
                    raise ExampleNotFound(f"no item {value} in this index (or it was deleted)")
                return self.embeddings([int(value)], "image"), int(value)
            if kind == "text":
                return encode_texts(self.clip, [str(value)]), None
            if kind == "image_base64":
                kind, value = "image", base64.b64decode(str(value).partition(",")[2] or str(value))
            if kind == "image":
                return encode_images(self.clip, [value]), None
            v = normalised(value)
            if v.shape[1] != self.dim:
                raise ValueError(f"an example embedding must have {self.dim} numbers, got {v.shape[1]}")
            return v, None

        def side(items) -> tuple[np.ndarray, list]:
            got = [one(*kind) for kind in items]
            vecs = [v / np.linalg.norm(v, axis=1, keepdims=True) for v, _ in got]
            return (np.concatenate(vecs).astype(np.float32) if vecs else np.zeros((0, self.dim), np.float32),
                    [i for _, i in got if i is not None])

        pos, pos_ids = side(kinds[:len(positive)])
        neg, neg_ids = side(kinds[len(positive):])
        return Examples(strategy, pos, neg, tuple(pos_ids + neg_ids))

    def search_text(self, texts: list[str], k: int = 10, modality: str = "image") -> list[list[dict]]:
        """Top-k rows per text (plain CLIP cosine) among ``modality`` items."""
        return self.query(text=list(texts), k=k, target=modality)
