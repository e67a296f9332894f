"""The fluent query API (LanceDB's style): ``idx.search("a dog").where("year >= 2020").rerank("nnn")
.hybrid().limit(10).to_list()``. Each call returns a new builder over a copied :class:`QuerySpec`;
the terminal calls run it through ``query.spec.run``, as the CLI, ``Index.query`` and the HTTP service do.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .comclip import ComclipOptions
from .spec import QuerySpec, rows, run, with_options


class QueryBuilder:
    def __init__(self, index, spec: QuerySpec):
        self._index, self.spec = index, spec

    def _with(self, **kw) -> "QueryBuilder":
        return QueryBuilder(self._index, with_options(self.spec, **kw))

    # ---- what is searched ------------------------------------------------------------------------
    def like(self, *examples) -> "QueryBuilder":
        """Add positive examples (keys, ids, texts, image files or bytes, vectors; ``query.examples``)."""
        return self._with(positive=tuple(self.spec.positive) + examples)

    def unlike(self, *examples) -> "QueryBuilder":
        """Add negative examples."""
        return self._with(negative=tuple(self.spec.negative) + examples)

    def strategy(self, name: str) -> "QueryBuilder":
        """How examples combine: 'average_vector' (default), 'best_score' or 'sum_scores'."""
        return self._with(strategy=name)

    def text_match(self, words: str) -> "QueryBuilder":
        """Keywords (BM25): alone a keyword search; with ``hybrid()`` fused with the other query."""
        return self._with(text_match=words)

    def hybrid(self, fusion: str = "rrf", keyword_weight: Optional[float] = None) -> "QueryBuilder":
        """Fuse with the keyword ranking of ``text_match`` (default: the query text)."""
        return self._with(hybrid=True, fusion=fusion, keyword_weight=keyword_weight)

    # ---- how it is ranked and filtered -----------------------------------------------------------
    def rerank(self, method: str, candidates: Optional[int] = None, lam: Optional[float] = None,
               alpha: Optional[float] = None, comclip: Optional[ComclipOptions] = None) -> "QueryBuilder":
        """'clip', 'bsap', 'hybrid' (BSAP-H) or 'nnn' (exact over the corpus; over CLIP's top N with
        ``candidates``), or 'comclip' (a text query's top ``candidates``, 10 by default, by ComCLIP;
        ``comclip``: its weighting, parses and regions)."""
        return self._with(rerank=method, candidates=candidates, lam=lam,
                          alpha=self.spec.alpha if alpha is None else alpha, comclip=comclip)

    def where(self, expression: str) -> "QueryBuilder":
        """A SQL boolean expression over the metadata columns."""
        return self._with(where=expression)

    def target(self, modality: str) -> "QueryBuilder":
        """Search among the corpus 'image's (default) or its captions ('text')."""
        return self._with(target=modality)

    def dedup(self, threshold: float = 0.94) -> "QueryBuilder":
        return self._with(dedup=threshold)

    def min_score(self, floor) -> "QueryBuilder":
        """Drop results below ``floor`` (a number on the method's score, or 'auto': the recorded floor)."""
        return self._with(min_score=floor)

    def limit(self, k: int) -> "QueryBuilder":
        return self._with(k=k)

    def with_embeddings(self) -> "QueryBuilder":
        return self._with(return_embeddings=True)

    # ---- results ---------------------------------------------------------------------------------
    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global ids), one row per query (ids -1 where fewer qualify)."""
        return run(self._index, self.spec)

    def to_list(self) -> list[dict]:
        """Result rows of the (first) query: metadata, score, id."""
        return rows(self._index, self.spec, *self.to_arrays())[0]

    def to_arrow(self):
        """The result rows as a pyarrow Table."""
        import pyarrow as pa

        return pa.Table.from_pylist(self.to_list())

    def to_pandas(self):
        """The result rows as a pandas DataFrame (needs pandas)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas (or use to_arrow / to_list)") from None
        return self.to_arrow().to_pandas()

    def __repr__(self) -> str:
        set_ = {k: v for k, v in vars(self.spec).items() if v not in (None, (), False, {}) and
                v != QuerySpec.__dataclass_fields__[k].default}
        return f"QueryBuilder({', '.join(f'{k}={v!r}' for k, v in set_.items())})"
