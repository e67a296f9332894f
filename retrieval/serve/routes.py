"""The HTTP routes and request models of the service, registered on a FastAPI app by ``add_routes``."""
from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import FastAPI, File, Form, Path, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..errors import IndexFolderError, RetrievalError
from ..query.biases import offsets_refusal
from ..query.filters import FilterError
from ..query.comclip import missing_extra, refusal
from ..query.keyword import parse as keyword_parse
from ..query.spec import QuerySpec, floor
from .admin import LOOPBACK, authorised
from .models import (ClassifyBody, ClassifyResult, DeleteBody, Deleted, Health, IndexSummary, Reloaded, Rerank,
                     SearchBody, SearchResult, Target, errors)
from .service import (MAX_ID, MAX_K, WEB, HTTPError, Query, Service, b64_image, comclip_options, decoded,
                      embedding_vector, encode_image, http_example, rerank_methods)

def add_routes(app: FastAPI, service: Service) -> None:
    """Register every route of the service on ``app``."""
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((WEB / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():  # FastAPI's Swagger UI loads its scripts from a CDN; this page needs none
        return HTMLResponse((WEB / "docs.html").read_text(encoding="utf-8"))

    @app.get("/health", response_model=Health)
    async def health():
        return {"status": "ok", "indexes": len(service.indexes), "models": service.models.state()}

    @app.get("/indexes", response_model=list[IndexSummary])
    async def indexes():
        out = []
        for name, idx in service.indexes.items():
            m = idx.manifest
            out.append({"name": name, "rows": len(idx), "dim": idx.dim, "model": m["model"].get("arch"),
                        "pretrained": m["model"].get("pretrained"), "shards": len(idx.shards),
                        "rerank": rerank_methods(idx),
                        "corpus": m["corpus"].get("type")})
        return out

    async def _search(body: SearchBody, image_bytes: Optional[bytes] = None):
        name, idx = service.index(body.index)
        spec = QuerySpec(k=body.k, target=body.target, rerank=body.rerank, candidates=body.candidates, lam=body.lam,
                         alpha=body.alpha, where=body.where, dedup=body.dedup, text=body.text,
                         return_embeddings=body.return_embeddings, text_match=body.text_match, hybrid=body.hybrid,
                         fusion=body.fusion, keyword_weight=body.keyword_weight, strategy=body.strategy,
                         min_score=body.min_score, item_id=body.item_id)
        q = Query(name, spec)
        if spec.text_match is not None or spec.hybrid:  # checked now: bad syntax is the request's 422
            try:
                keyword_parse(spec.text_match if spec.text_match is not None else spec.text)
            except ValueError as e:
                raise HTTPError(422, str(e)) from None
            if not idx.snapshot.keywords.available:
                raise HTTPError(409, f"index {name!r} has no full-text index; run `retrieval migrate` on it once")
        if body.where is not None:  # evaluated (and cached) now: a bad expression is the request's 422
            try:
                await run_in_threadpool(idx.check_where, body.where)
            except FilterError as e:
                raise HTTPError(422, str(e)) from None
            except IndexFolderError as e:  # the served folder's metadata is gone: unavailable, not the request
                raise HTTPError(503, str(e)) from None
        if body.image_base64 is not None or image_bytes is not None:
            spec.image = data = image_bytes if image_bytes is not None else b64_image(body.image_base64)
            q.image = await decoded(service, data, name)
        elif body.embedding is not None:
            v = embedding_vector(body.embedding, idx.dim)
            if v is None:
                return JSONResponse({"detail": f"embedding must be {idx.dim} finite numbers, not all zero"}, 422)
            q.vector = spec.embedding = v / np.linalg.norm(v)
        elif body.item_id is not None:
            if not idx.is_live([body.item_id])[0]:
                raise HTTPError(404, f"index {name!r} has no item {body.item_id}")
            q.vector = idx.embeddings([body.item_id], "image")[0]
        spec.positive = tuple([await http_example(service, name, e) for e in body.positive or ()])
        spec.negative = tuple([await http_example(service, name, e) for e in body.negative or ()])
        if spec.kind == "examples" and q.image is not None:  # the query image, one more positive: decoded
            spec.image, spec.embedding = None, await run_in_threadpool(encode_image, service, name, q.image)
            q.image = None
        if body.rerank == "comclip":
            if "comclip" not in rerank_methods(idx):
                raise HTTPError(409, refusal(idx.manifest) or missing_extra() or f"index {name!r} has no model")
            await service.models.loaded(name)   # it encodes the candidates' images
            service.full_model(name)
            spec.comclip = comclip_options(body, tuple(service.image_roots))
        elif spec.kind != "keyword" and body.rerank not in rerank_methods(idx):
            raise HTTPError(409, offsets_refusal(idx.manifest, name))
        try:
            spec.check()
            spec.min_score = await run_in_threadpool(floor, idx, spec)
        except ValueError as e:
            raise HTTPError(422, str(e)) from None
        try:
            results = await service.batcher.submit(q)
        except IndexFolderError as e:  # the server's own files, not the request: unavailable
            raise HTTPError(503, str(e)) from None
        except LookupError as e:
            raise HTTPError(404, str(e)) from None
        except (ValueError, RetrievalError) as e:
            raise HTTPError(400, str(e)) from None
        return {"index": name, "k": body.k, "rerank": body.rerank, "target": body.target, "results": results,
                "partial": bool(q.missing), "missing_shards": list(q.missing)}

    @app.post("/search", response_model=SearchResult, responses=errors(400, 404, 409, 413, 422, 503))
    async def search(body: SearchBody):
        """Search with a text, a base64 image, an embedding or an item; or keywords (``text_match``) alone,
        or fused with the other query (``hybrid``). Micro-batched with concurrent requests."""
        return await _search(body)

    @app.post("/search/upload", response_model=SearchResult, responses=errors(400, 404, 409, 413, 422, 503))
    async def search_upload(file: UploadFile = File(...), index: Optional[str] = Form(None),
                            k: int = Form(10, ge=1, le=MAX_K), target: Target = Form("image"),
                            rerank: Rerank = Form("clip")):
        """Search by an uploaded image file (multipart/form-data)."""
        data = await file.read()
        if not data:
            raise HTTPError(400, "the uploaded file is empty")
        body = SearchBody.model_construct(index=index, text=None, image_base64=None, embedding=None, item_id=None,
                                          k=k, target=target, rerank=rerank, candidates=None, lam=None, alpha=0.75,
                                          return_embeddings=False, where=None, dedup=None, text_match=None,
                                          hybrid=False, fusion="rrf", keyword_weight=None, positive=None,
                                          negative=None, strategy="average_vector", min_score=None)
        return await _search(body, image_bytes=data)

    @app.post("/classify", response_model=ClassifyResult, responses=errors(400, 404, 413, 422, 503))
    async def classify(body: ClassifyBody):
        """X-MoRe classification of one or more base64 images against the given classes."""
        from ..classify import check_classes, check_template

        name, idx = service.index(body.index)
        try:
            classes = tuple(check_classes(body.classes))
        except ValueError as e:
            raise HTTPError(422, str(e)) from None
        try:
            templates = tuple(check_template(t) for t in body.templates)
        except ValueError as e:
            raise HTTPError(422, str(e)) from None
        tensors = [await decoded(service, b64_image(b), name) for b in body.images_base64]
        try:
            results = await run_in_threadpool(service.classify, name, tensors, classes, templates,
                                              body.method, body.neighbours, body.captions)
        except IndexFolderError as e:
            raise HTTPError(503, str(e)) from None
        except (ValueError, RetrievalError) as e:
            raise HTTPError(400, str(e)) from None
        return {"index": name, "method": body.method, "results": results}

    async def _write(request: Request, name: str, keys: list[str]) -> dict:
        status, why = authorised(service.write_token, request.headers.get("authorization"))
        if status:
            raise HTTPError(status, why)
        name, idx = service.index(name)
        try:
            found = await run_in_threadpool(idx.delete, keys)
        except IndexFolderError as e:  # another writer holds the folder, or it is incomplete
            raise HTTPError(409, str(e)) from None
        return {"index": name, "deleted": len(found.found), "already_deleted": len(found.deleted),
                "not_found": found.missing[:1000]}

    @app.delete("/items/{index}/{key:path}", response_model=Deleted, responses=errors(401, 403, 404, 409, 422))
    async def delete_item(index: str, key: str, request: Request):
        """Delete the item of ``key`` (needs the write token; the key may hold '/', URL-encoded or not)."""
        return await _write(request, index, [key])

    @app.post("/items/{index}/delete", response_model=Deleted, responses=errors(400, 401, 403, 404, 409, 415, 422))
    async def delete_items(index: str, body: DeleteBody, request: Request):
        """Delete the items of ``keys`` in one manifest write (needs the write token and a JSON body)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPError(415, "send the keys as application/json")
        return await _write(request, index, body.keys)

    @app.post("/admin/reload", response_model=Reloaded, responses=errors(401, 403))
    async def reload(request: Request):
        """Serve each index folder's newest manifest now (needs the write token, from loopback only)."""
        status, why = authorised(service.write_token, request.headers.get("authorization"))
        if status:
            raise HTTPError(status, why)
        if request.client is None or request.client.host not in LOOPBACK:
            raise HTTPError(403, "reload is accepted from loopback only")
        return {"indexes": await run_in_threadpool(service.reloader.reload)}

    @app.get("/items/{index}/{item_id}/image", responses={**errors(403, 404, 422), 200: {
        "content": {"image/*": {}}, "description": "the image file"}})
    async def item_image(index: str, item_id: int = Path(..., ge=0, le=MAX_ID)):
        """The source image of row ``item_id``: only image files under the index's image roots."""
        name, idx = service.index(index)
        if not idx.is_live([item_id])[0]:
            raise HTTPError(404, f"index {name!r} has no item {item_id}")
        row = idx.metadata([item_id])[0]
        data, media = await run_in_threadpool(service.item_image, name, row)
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})
