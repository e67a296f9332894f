"""clip-retrieval back's wire API next to ours (DESIGN §9): ``ClipClient`` and clip-retrieval's web
front talk to ``retrieval serve`` unchanged.

Routes: ``POST /knn-service``, ``POST /metadata`` (also under ``//``: the bundled front builds its
URLs from a backend address ending in ``/``), ``GET /indices-list``, ``GET /indices-info`` (what
each index serves and which clip back options it ignores), ``GET /config.json`` (the front's
configuration) and, with ``front``, the front itself at ``/clip-front/``.

Parsing is lenient as clip back's is, for these read-only routes only: the body is JSON whatever the
Content-Type (ClipClient sends none, the front ``text/plain``), nulls stand for unused inputs,
``aesthetic_score`` may be an int, a numeric string or ``""``. Bad input gets a JSON 400 where clip
back answers an HTML 500. Every answer carries ``Access-Control-Allow-Origin: *``. Options this
server has no model for (safety, violence, aesthetic, mclip) are accepted and named in the
``X-Retrieval-Ignored`` header. Extra optional fields: ``rerank`` (clip | bsap | hybrid | nnn) and
``where`` (a SQL filter over the metadata columns).
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ..errors import IndexFolderError, RetrievalError
from ..methods.rerank import METHODS as RERANK_METHODS
from ..query.biases import offsets_refusal
from ..query.filters import FilterError
from ..query.spec import QuerySpec
from .service import MAX_ID, MAX_K, HTTPError, Query, Service, b64_image, decoded, embedding_vector, rerank_methods

CORS = {"Access-Control-Allow-Origin": "*"}
DEDUP_COSINE = 0.94          # clip back's near-duplicate threshold
UNAVAILABLE = {"use_safety_model": "no safety model on this server",
               "use_violence_detector": "no violence detector on this server",
               "aesthetic_score": "no aesthetic embeddings on this server",
               "use_mclip": "no multilingual CLIP on this server: texts are encoded with the index's model"}
FRONT_PACKAGE_HINT = "pip install --no-deps clip-retrieval==2.45.0"


def find_clip_front() -> Path:
    """The built web front of an installed clip-retrieval wheel (``front/build`` beside the package),
    found without importing the package (its ``__init__`` imports heavy dependencies)."""
    import importlib.util

    from ..errors import UsageError

    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.origin:
        raise UsageError(f"--clip-front needs the clip-retrieval package: {FRONT_PACKAGE_HINT}")
    front = Path(spec.origin).parent.parent / "front" / "build"
    if not (front / "index.html").is_file():
        raise UsageError(f"the installed clip-retrieval has no built front at {front}; {FRONT_PACKAGE_HINT}")
    return front


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=CORS)


async def _body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "the body is not JSON") from None
    except RecursionError:
        raise HTTPError(400, "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return body


def _int(body: dict, name: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
    v = body.get(name)
    if v is None or v == "":
        return default
    try:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        raise HTTPError(400, f"{name} must be an integer, got {v!r}"[:200]) from None
    if not lo <= n <= hi:
        raise HTTPError(400, f"{name} must be in [{lo}, {hi}], got {n}")
    return n


def _number(body: dict, name: str) -> Optional[float]:
    v = body.get(name)
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise HTTPError(400, f"{name} must be a number or \"\", got {v!r}"[:200]) from None
    if not math.isfinite(x):
        raise HTTPError(400, f"{name} must be finite")
    return x


def parse_knn(body: dict, service: Service) -> tuple[Query, int, list[str]]:
    """(the search, num_images, the options ignored) of a ``/knn-service`` body; HTTPError 400 on bad input."""
    name, idx = service.index(body.get("indice_name") or None)
    modality = body.get("modality") or "image"
    if modality not in ("image", "text"):
        raise HTTPError(400, f"modality must be 'image' or 'text', got {modality!r}"[:200])
    num_images = _int(body, "num_images", 40, 0, MAX_K)
    k = _int(body, "num_result_ids", None, 1, MAX_K) or max(num_images, 1)
    rerank = body.get("rerank") or "clip"
    if rerank not in RERANK_METHODS:
        raise HTTPError(400, f"rerank must be one of {', '.join(RERANK_METHODS)}, got {rerank!r}"[:200])
    if rerank not in rerank_methods(idx, compositional=False):
        raise HTTPError(409, offsets_refusal(idx.manifest, name))
    where = body.get("where")
    if where is not None and not isinstance(where, str):
        raise HTTPError(400, "where must be a string")
    ignored = [f for f in ("use_safety_model", "use_violence_detector", "use_mclip") if body.get(f)]
    if _int(body, "aesthetic_score", None, -(2**31), 2**31) is not None and _number(body, "aesthetic_weight") != 0:
        ignored.append("aesthetic_score")
    q = Query(name, QuerySpec(k=k, target=modality, rerank=rerank, where=where,
                              dedup=DEDUP_COSINE if body.get("deduplicate") else None), raw=True)
    text, image, url, emb = (body.get(f) for f in ("text", "image", "image_url", "embedding_input"))
    if isinstance(text, str) and text.strip():
        if len(text) > 2000:
            raise HTTPError(400, "text is longer than 2000 characters")
        q.spec.text = text
    elif image is not None:
        if not isinstance(image, str):
            raise HTTPError(400, "image must be a base64 string")
        q.image = q.spec.image = b64_image(image)  # decoded by the caller, off the event loop
    elif url is not None:
        raise HTTPError(400, "image_url is not fetched by this server (it makes no outbound requests): "
                             "send the image itself, base64-encoded, in image")
    elif emb is not None:
        q.vector = q.spec.embedding = _embedding(emb, idx.dim, rerank)
    else:
        raise HTTPError(400, "give one of text, image or embedding_input")
    return q, num_images, ignored


def _embedding(emb: Any, dim: int, rerank: str) -> np.ndarray:
    v = embedding_vector(emb, dim)
    if v is None:
        raise HTTPError(400, f"embedding_input must be {dim} finite numbers, not all zero")
    # clip back searches the vector as given (similarity = raw inner product); the debiasing methods
    # weigh the query against per-item offsets, so they get it normalised
    return v if rerank == "clip" else v / np.linalg.norm(v)


def _local_image(service: Service, name: str, row: dict) -> Optional[str]:
    """Base64 of the row's image when the image-root rule lets it be served (clip back's ``image``)."""
    try:
        data, _ = service.item_image(name, row)
    except HTTPError:
        return None
    return base64.b64encode(data).decode("ascii")


def _meta_dict(service: Service, name: str, row: dict) -> dict:
    out = {c: v for c, v in row.items() if c not in ("id", "_source")}
    img = _local_image(service, name, row)
    if img is not None:
        out["image"] = img
    return out


def knn_rows(service: Service, name: str, scores: np.ndarray, ids: np.ndarray, num_images: int) -> list[dict]:
    """clip back's rows: metadata + id + similarity for the first ``num_images``, then {id, similarity}."""
    idx = service.indexes[name]
    head = idx.metadata(ids[:num_images]) if num_images else []
    rows = []
    for j, (i, s) in enumerate(zip(ids.tolist(), scores.tolist())):
        r = _meta_dict(service, name, head[j]) if j < len(head) else {}
        r["id"], r["similarity"] = int(i), float(s)
        rows.append(r)
    return rows


def add_clip_back_routes(app: FastAPI, service: Service, front: Optional[Path] = None) -> None:
    """Register clip-retrieval back's routes (and its front at /clip-front/ when ``front`` is given)."""

    async def knn(request: Request):
        try:
            q, num_images, ignored = parse_knn(await _body(request), service)
            idx = service.indexes[q.index]
            if q.spec.where is not None:
                await run_in_threadpool(idx.check_where, q.spec.where)
            if isinstance(q.image, bytes):
                q.image = await decoded(service, q.image, q.index)
            scores, ids = await service.batcher.submit(q)
            rows = await run_in_threadpool(knn_rows, service, q.index, scores, ids, num_images)
        except HTTPError as e:
            return _error(e.status, e.detail)
        except FilterError as e:
            return _error(400, str(e))
        except IndexFolderError as e:
            return _error(503, str(e))
        except (ValueError, RetrievalError) as e:
            return _error(400, str(e))
        headers = dict(CORS)
        if ignored:
            headers["X-Retrieval-Ignored"] = ", ".join(ignored)
        return JSONResponse(rows, headers=headers)

    async def metadata(request: Request):
        try:
            body = await _body(request)
            ids = body.get("ids") or []
            if not isinstance(ids, list) or len(ids) > MAX_K or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_ID for i in ids):
                raise HTTPError(400, f"ids must be a list of at most {MAX_K} integers in [0, 2^63)")
            if not ids:
                return JSONResponse([], headers=CORS)
            name, idx = service.index(body.get("indice_name") or None)
            live = idx.is_live(ids)
            found = dict(zip([i for i, ok in zip(ids, live) if ok],
                             await run_in_threadpool(idx.metadata, [i for i, ok in zip(ids, live) if ok])))
            out = await run_in_threadpool(lambda: [{"id": i, "metadata": _meta_dict(service, name, found[i]) if i in found else {}}
                                                   for i in ids])
        except HTTPError as e:
            return _error(e.status, e.detail)
        headers = dict(CORS)
        if not live.all():
            headers["X-Retrieval-Missing-Ids"] = str(int((~live).sum()))
        return JSONResponse(out, headers=headers)

    async def preflight():
        return Response(status_code=204, headers={**CORS, "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
                                                  "Access-Control-Allow-Headers": "Content-Type"})

    for path in ("/knn-service", "//knn-service"):
        app.add_api_route(path, knn, methods=["POST"], include_in_schema=path == "/knn-service",
                          summary="clip-retrieval back's search (ClipClient, the clip front)")
        app.add_api_route(path, preflight, methods=["OPTIONS"], include_in_schema=False)
    for path in ("/metadata", "//metadata"):
        app.add_api_route(path, metadata, methods=["POST"], include_in_schema=path == "/metadata",
                          summary="clip-retrieval back's metadata by global ids")
        app.add_api_route(path, preflight, methods=["OPTIONS"], include_in_schema=False)

    @app.get("/indices-list", summary="clip-retrieval back's index names")
    async def indices_list():
        return JSONResponse(list(service.indexes), headers=CORS)

    @app.get("/indices-info", summary="each index's rows and methods, and the clip back options it ignores")
    async def indices_info():
        out = {name: {"rows": len(idx), "dim": idx.dim, "model": idx.manifest["model"].get("arch"),
                      "rerank": rerank_methods(idx, compositional=False),
                      "ignored_options": UNAVAILABLE}
               for name, idx in service.indexes.items()}
        return JSONResponse(out, headers=CORS)

    def config(request: Request) -> JSONResponse:
        return JSONResponse({"defaultBackend": str(request.base_url).rstrip("/"), "defaultIndex": next(iter(service.indexes)),
                             "urlColumn": "url"}, headers=CORS)

    app.add_api_route("/config.json", config, methods=["GET"], include_in_schema=False)
    if front is not None:
        from fastapi.staticfiles import StaticFiles

        app.add_api_route("/clip-front/config.json", config, methods=["GET"], include_in_schema=False)
        app.mount("/clip-front", StaticFiles(directory=str(front), html=True), name="clip-front")
