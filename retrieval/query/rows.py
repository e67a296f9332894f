"""Searches by texts, image paths or raw embeddings answered as result rows (metadata, score and,
when asked, the stored embedding): the convenience half of :class:`~retrieval.query.index.Index`."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import numpy as np

from .encode import encode_images, encode_texts, query_vectors
from .rerankers import Clip


class RowQueries:
    """Mixed into ``Index``: needs its ``clip``, ``snapshot``, ``search``, ``metadata`` and ``embeddings``."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.clip, texts)

    def encode_images(self, paths: list[str]) -> np.ndarray:
        return encode_images(self.clip, paths)

    def query(self, text: Optional[list[str]] = None, image: Optional[list[str]] = None,
              embedding: Optional[np.ndarray] = None, k: int = 10, target: str = "image",
              return_embeddings: bool = False, text_match: Union[str, list[str], None] = None,
              hybrid: bool = False, **search_kw) -> list[list[dict]]:
        """Search with texts, image paths or raw embeddings; one list of result rows per query.

        ``text_match`` alone: keyword search (BM25 over the captions and text columns). ``hybrid``:
        the CLIP (or reranked) ranking fused with the keyword ranking of ``text_match``, or of
        ``text`` when no ``text_match`` is given (``fusion``, ``keyword_weight`` as in ``search``)."""
        if text_match is not None and text is None and image is None and embedding is None:
            if hybrid:
                raise ValueError("hybrid search needs a text, image or embedding query besides text_match")
            unknown = set(search_kw) - {"where", "captioned"}
            if unknown:
                raise ValueError(f"a keyword-only search takes no {', '.join(sorted(unknown))}")
            scores, ids = self.keyword_search(text_match, k, target=target, **search_kw)
        else:
            q = query_vectors(self.clip, text, image, embedding)
            if hybrid or text_match is not None:
                if not hybrid:
                    raise ValueError("text_match with a text, image or embedding query needs hybrid=True "
                                     "(or drop the other query for a keyword search)")
                words = text_match if text_match is not None else text
                if words is None:
                    raise ValueError("hybrid search needs text_match (or a text query to match as keywords)")
                search_kw["text_match"] = [words] * len(q) if isinstance(words, str) else list(words)
            scores, ids = self.search(q, k, target, **search_kw)
        out = []
        for sc, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            rows = self.metadata(row_ids[keep])
            embs = self.embeddings(row_ids[keep], target) if return_embeddings else None
            out.append([{**r, "score": float(s), **({"embedding": embs[i]} if return_embeddings else {})}
                        for i, (r, s) in enumerate(zip(rows, sc[keep]))])
        return out

    def keyword_search(self, texts: Union[str, Sequence[str]], k: int = 10, where: Optional[str] = None,
                       target: str = "image", captioned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (BM25 scores, global ids) per keyword query (``query.keyword``: words, "phrases",
        prefix*, AND/OR/NOT) over the captions and chosen text columns; ids -1 where fewer rows match.
        Deleted rows and rows ``where`` excludes are never returned."""
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
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

    def search_text(self, texts: list[str], k: int = 10, modality: str = "image") -> list[list[dict]]:
        """Top-k rows per text (plain CLIP cosine) among ``modality`` items."""
        return self.query(text=list(texts), k=k, target=modality)
