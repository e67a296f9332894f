"""Request and response models of the HTTP API (what ``/openapi.json`` declares).

Numbers must be finite: NaN and infinities (which Python's JSON parser accepts) are refused with 422
like any other invalid value.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, Field, model_validator

from ..methods.rerank import METHODS as RERANK_METHODS
from ..methods.xmore import METHODS as XMORE_METHODS
from ..query.examples import STRATEGIES
from ..query.fusion import FUSIONS
from .service import MAX_ID, MAX_K

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

Rerank = Literal[RERANK_METHODS + ("comclip",)]
Weighting = Literal["sum", "softmax"]
Target = Literal["image", "text"]
Fusion = Literal[FUSIONS]
Strategy = Literal[STRATEGIES]
Method = Literal[XMORE_METHODS]


class Example(BaseModel):
    """One example: exactly one of key, id, text, image_base64, embedding."""

    key: Optional[str] = Field(None, min_length=1, max_length=1000)
    id: Optional[int] = Field(None, ge=0, le=MAX_ID)
    text: Optional[str] = Field(None, min_length=1, max_length=2000)
    image_base64: Optional[str] = None
    embedding: Optional[list[FiniteFloat]] = Field(None, max_length=8192)

    @model_validator(mode="after")
    def one(self):
        if sum(getattr(self, f) is not None for f in ("key", "id", "text", "image_base64", "embedding")) != 1:
            raise ValueError("an example gives exactly one of key, id, text, image_base64 or embedding")
        return self


class SearchBody(BaseModel):
    """Exactly one of text, image_base64 (optionally a data: URL), embedding or item_id."""

    index: Optional[str] = Field(None, description="index name (default: the first served)")
    text: Optional[str] = Field(None, max_length=2000)
    image_base64: Optional[str] = None
    embedding: Optional[list[FiniteFloat]] = None
    item_id: Optional[int] = Field(None, ge=0, le=MAX_ID, description="'more like this': the stored image embedding of a row")
    k: int = Field(10, ge=1, le=MAX_K)
    target: Target = "image"
    rerank: Rerank = "clip"
    candidates: Optional[int] = Field(None, ge=1, le=100_000)
    lam: Optional[FiniteFloat] = Field(None, ge=0.0, le=1.0, description="BSAP-H: weight of CLIP in s - (1 - lam) c "
                                       "(default: chosen from the index's own pairs by `retrieval bias`)")
    alpha: FiniteFloat = Field(0.75, ge=0.0, le=10.0)
    where: Optional[str] = Field(None, max_length=2000, description="SQL boolean expression over the metadata columns")
    dedup: Optional[FiniteFloat] = Field(None, gt=0.0, le=1.0, description="collapse near-duplicates (cosine >= this)")
    return_embeddings: bool = False
    text_match: Optional[str] = Field(None, max_length=2000, description='keywords (words, "phrases", prefix*, '
                                      "AND/OR/NOT) over the captions and text columns: alone a BM25 keyword search; "
                                      "with hybrid, fused with the query's CLIP ranking")
    hybrid: bool = Field(False, description="fuse the ranking with the keyword ranking of text_match (default: of text)")
    fusion: Fusion = Field("rrf", description="rrf (reciprocal rank fusion, k=60) or weighted")
    keyword_weight: Optional[FiniteFloat] = Field(None, ge=0.0, le=1.0, description="weighted fusion: the keyword "
                                                  "side's weight (default 0.5)")

    positive: Optional[list[Example]] = Field(None, min_length=1, max_length=64,
                                             description="examples to find more like (with strategy)")
    negative: Optional[list[Example]] = Field(None, min_length=1, max_length=64, description="examples to move away from")
    strategy: Strategy = Field("average_vector", description="how examples combine (Qdrant's strategies)")
    min_score: Optional[Union[FiniteFloat, Literal["auto"]]] = Field(
        None, description="drop results below this score of the method ('auto': the floor the index recorded)")
    weighting: Weighting = Field("sum", description="rerank comclip: the parts' weights, s_k / sum s (its released "
                                 "code) or softmax(s_k / temperature)")
    temperature: FiniteFloat = Field(1.0, gt=0.0, le=1e6, description="rerank comclip: the softmax temperature")
    parse: Optional[dict] = Field(None, description="rerank comclip: the text's parse in ComCLIP's JSON shape, "
                                  '{"objects": {name: {"attributes": ...}}, "connections": [{"subject", "verb", '
                                  '"object"}]} (default: the built-in parser)')

    @model_validator(mode="after")
    def one_query(self):
        given = [x is not None for x in (self.text, self.image_base64, self.embedding, self.item_id)]
        examples = bool(self.positive or self.negative)
        if sum(given) > 1 or (sum(given) == 0 and not examples and (self.text_match is None or self.hybrid)):
            raise ValueError("give exactly one of text, image_base64, embedding or item_id (or text_match alone, "
                             "or positive/negative examples)")
        if self.negative and not (self.positive or any(given)):
            raise ValueError("negative examples need a positive example or a query")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        if self.text_match is not None and not self.text_match.strip():
            raise ValueError("text_match is empty")
        if self.text_match is not None and sum(given) and not self.hybrid:
            raise ValueError("text_match with another query needs hybrid: true (or send text_match alone)")
        if self.hybrid and self.text_match is None and self.text is None:
            raise ValueError("hybrid needs text_match (or a text to match as keywords)")
        return self


class ClassifyBody(BaseModel):
    index: Optional[str] = None
    images_base64: list[str] = Field(..., min_length=1, max_length=64,
                                     description="images classified together (batch-mean confidence weights)")
    classes: list[str] = Field(..., min_length=2, max_length=1000)
    templates: list[str] = Field(["a photo of a {}."], min_length=1, max_length=32,
                                 description="prompt templates, each with exactly one {} for the class name")
    method: Method = "xmore"
    neighbours: int = Field(128, ge=1, le=2048)
    captions: int = Field(16, ge=1, le=1024)


class DeleteBody(BaseModel):
    keys: list[str] = Field(..., min_length=1, max_length=100_000)


class Deleted(BaseModel):
    index: str
    deleted: int
    already_deleted: int
    not_found: list[str]


class Reloaded(BaseModel):
    indexes: dict[str, int] = Field(..., description="each index's manifest generation now served")


class ErrorBody(BaseModel):
    """Every error answer: one line, or (422) the validation errors."""

    detail: Union[str, list[dict[str, Any]]]


class SearchResult(BaseModel):
    index: str
    k: int
    rerank: str
    target: str
    results: list[dict[str, Any]] = Field(..., description="rows, best first: id, score, image_url, key, caption, "
                                                           "metadata columns (and embedding if asked)")
    partial: bool = Field(False, description="true when some shards did not answer (a sharded server on Ray): "
                                             "the results are the best among the others")
    missing_shards: list[int] = Field(default_factory=list, description="the shards left out of a partial answer")


class Label(BaseModel):
    label: str
    p: float


class Classified(BaseModel):
    path: str
    label: str
    score: float
    image_top3: list[Label]
    caption_top3: list[Label]
    w_img: float
    w_cap: float
    neighbours: list[int]


class ClassifyResult(BaseModel):
    index: str
    method: str
    results: list[Classified]


class Health(BaseModel):
    status: str
    indexes: int
    models: Literal["ready", "loading", "failed"] = Field(
        description="whether every index has its full model: 'loading' while text queries are answered from "
                    "the cached text tower and image queries wait; 'failed' if a load failed (image queries 503)")


class IndexSummary(BaseModel):
    name: str
    rows: int
    dim: int
    model: Optional[str]
    pretrained: Optional[str]
    shards: int
    rerank: list[str]
    corpus: Optional[str]


def errors(*codes: int) -> dict:
    """The ``responses=`` declaration of a route's error statuses."""
    return {c: {"model": ErrorBody} for c in codes}
