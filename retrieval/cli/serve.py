"""``retrieval serve``: the HTTP service over one or more index folders."""
from __future__ import annotations

import os

import click

from ..query.backends import BACKENDS

from .common import parse_size


@click.command()
@click.argument("indexes", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@click.option("--port", default=8000, show_default=True)
@click.option("--max-batch", default=64, show_default=True, help="Most search requests run as one batch.")
@click.option("--max-wait-ms", default=4.0, show_default=True, help="Longest wait for a batch to fill.")
@click.option("--max-body", default="16MB", show_default=True, help="Largest request body (bigger: 413).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
def serve(indexes, host, port, max_batch, max_wait_ms, max_body, backend):
    """Serve INDEXES ([NAME=]FOLDER ...) over HTTP: API, OpenAPI docs at /docs, web page at /."""
    import uvicorn

    from ..query import open_index
    from ..serve import create_app

    opened = {}
    for spec in indexes:
        name, _, folder = spec.rpartition("=") if "=" in spec else (os.path.basename(os.path.normpath(spec)), "", spec)
        if name in opened:
            raise click.BadParameter(f"two indexes named {name!r}; use NAME=FOLDER", param_hint="INDEXES")
        opened[name] = open_index(folder, "auto", backend=backend)
    app = create_app(opened, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body=parse_size(max_body))
    click.echo(f"serving {', '.join(f'{n} ({len(i)} rows)' for n, i in opened.items())} on http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
