"""Searches by texts, image paths or raw embeddings answered as result rows (metadata, score and,
when asked, the stored embedding): the convenience half of :class:`~retrieval.query.index.Index`."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .encode import encode_images, encode_texts, query_vectors


class RowQueries:
    """Mixed into ``Index``: needs its ``clip``, ``search``, ``metadata`` and ``embeddings``."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.clip, texts)

    def encode_images(self, paths: list[str]) -> np.ndarray:
        return encode_images(self.clip, paths)

    def query(self, text: Optional[list[str]] = None, image: Optional[list[str]] = None,
              embedding: Optional[np.ndarray] = None, k: int = 10, target: str = "image",
              return_embeddings: bool = False, **search_kw) -> list[list[dict]]:
        """Search with texts, image paths or raw embeddings; one list of result rows per query."""
        q = query_vectors(self.clip, text, image, embedding)
        scores, ids = self.search(q, k, target, **search_kw)
        out = []
        for sc, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            rows = self.metadata(row_ids[keep])
            embs = self.embeddings(row_ids[keep], target) if return_embeddings else None
            out.append([{**r, "score": float(s), **({"embedding": embs[i]} if return_embeddings else {})}
                        for i, (r, s) in enumerate(zip(rows, sc[keep]))])
        return out

    def search_text(self, texts: list[str], k: int = 10, modality: str = "image") -> list[list[dict]]:
        """Top-k rows per text (plain CLIP cosine) among ``modality`` items."""
        return self.query(text=list(texts), k=k, target=modality)
