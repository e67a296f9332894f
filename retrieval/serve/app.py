"""``create_app``: the FastAPI app over opened indexes (``retrieval serve`` runs it with uvicorn).

Bodies over ``max_body`` bytes get 413; validation errors 422; bad base64 or a non-image 400; an
unknown index or item 404 (the routes raise :class:`~retrieval.serve.service.HTTPError`).
"""
from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .bodylimit import BodyLimit
from .routes import add_routes
from .service import MAX_BODY, HTTPError, Service


def create_app(indexes: dict, max_batch: int = 64, max_wait_ms: float = 4.0, max_body: int = MAX_BODY) -> FastAPI:
    """The FastAPI app serving ``indexes`` ({name: Index opened with its model})."""
    service = Service(indexes, max_batch, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # clean shutdown: finish queued searches, stop the batcher thread

    app = FastAPI(title="CLIP retrieval engine", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text/image/embedding search with BSAP, BSAP-H and NNN reranking, and X-MoRe classification.")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=max_body)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    add_routes(app, service)
    return app
