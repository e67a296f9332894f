"""``create_app``: the FastAPI app over opened indexes (``retrieval serve`` runs it with uvicorn).

Bodies over ``max_body`` bytes get 413; validation errors 422; bad base64 or a non-image 400; an
unknown index or item 404 (the routes raise :class:`~retrieval.serve.service.HTTPError`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..corpus.images import DEFAULT_MAX_PIXELS
from .bodylimit import BodyLimit
from .clipback import add_clip_back_routes
from .routes import add_routes
from .service import MAX_BODY, HTTPError, Service
from .startup import ModelLoading


def create_app(indexes: dict, max_batch: int = 64, max_wait_ms: float = 4.0, max_body: int = MAX_BODY,
               max_pixels: int = DEFAULT_MAX_PIXELS, decode_budget: Optional[int] = None,
               write_token: Optional[str] = None, reload_interval: float = 0.0,
               clip_front: Optional[Path] = None, image_roots: Sequence[str] = (),
               models: Optional[ModelLoading] = None) -> FastAPI:
    """The FastAPI app serving ``indexes`` ({name: Index opened with its model}).

    ``max_pixels``: the largest uploaded image (the build's limit by default); ``decode_budget``:
    pixels decoded at once across requests (default 2 x max_pixels). ``write_token`` turns on the
    mutating routes (deletes, reload); ``reload_interval`` > 0 polls the folders for newer manifests.
    clip-retrieval back's routes are always served (``clipback``); ``clip_front``, the folder of its
    built web front (``clipback.find_clip_front()``), is served at /clip-front/. ``image_roots``:
    folders besides the ones each build recorded that result images may be served from
    (``corpus.items``: a served file must resolve under a root and decode as an image). ``models``:
    the full models still loading in the background (``startup.attach_models``), if any.
    """
    service = Service(indexes, max_batch, max_wait_ms, max_pixels, decode_budget, write_token, reload_interval,
                      image_roots, models)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()  # the batcher runs already unless a previous lifespan closed it
        yield
        service.close()  # clean shutdown: finish queued searches, stop the batcher thread

    app = FastAPI(title="CLIP retrieval engine", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text/image/embedding search with BSAP, BSAP-H and NNN reranking, and X-MoRe classification.")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=max_body)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)

    add_routes(app, service)
    add_clip_back_routes(app, service, clip_front)
    return app


def validation_detail(errors: list) -> list[dict]:
    """FastAPI's validation errors as plain JSON: location, message and type, never the input (it may
    hold NaN, which JSON cannot carry, or a 16 MB image)."""
    return [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]
