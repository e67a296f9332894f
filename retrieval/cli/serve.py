"""``retrieval serve``: the HTTP service over one or more index folders."""
from __future__ import annotations

import os

import click

from ..corpus.images import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..query.backends import BACKENDS
from .common import POSITIVE, Count, Finite, Size


def check_listen(host: str, port: int) -> None:
    """Fail in one line, before any index or model is loaded, when ``host:port`` cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


@click.command()
@click.argument("indexes", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@click.option("--port", type=Count(1, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=POSITIVE, default=64, show_default=True, help="Most search requests run as one batch.")
@click.option("--max-wait-ms", type=Finite(0.0, 10_000.0), default=4.0, show_default=True,
              help="Longest wait for a batch to fill.")
@click.option("--max-body", type=Size(), default="16MB", show_default=True, help="Largest request body (bigger: 413).")
@click.option("--max-pixels", type=POSITIVE, default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest uploaded image in pixels (bigger: 413); the build's default.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--verify", is_flag=True, help="Check every byte of every index (sha256) before serving.")
@click.option("--write-token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Turn on the mutating routes (deletes, reload) for requests carrying this file's token "
                   "(else $RETRIEVAL_WRITE_TOKEN; without either, writes are off).")
@click.option("--reload-interval", type=Finite(0.0, 86_400.0), default=2.0, show_default=True,
              help="Seconds between checks for a newer manifest (a sync or delete by another process); 0: never.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Search on Ray actors (pip install '.[ray]'): each index's shards split into --shard-groups, "
                   "each group held by --replicas actors; alone, a local cluster; with an address (auto, "
                   "ray://host:10001), that cluster (the folders must be at the same path on every node).")
@click.option("--shard-groups", type=POSITIVE, default=2, show_default=True, help="With --ray: shard groups per index.")
@click.option("--replicas", type=POSITIVE, default=1, show_default=True,
              help="With --ray: actors per shard group (a dead one is replaced by another; none left: partial answers).")
@click.option("--ray-start-timeout", type=Finite(1.0, 86_400.0), default=120.0, show_default=True,
              help="With --ray: seconds to wait for every actor to be placed and open its shards.")
@click.option("--image-root", "image_roots", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Also serve result images from under this folder (repeatable). By default only the roots the "
                   "build recorded serve images: a folder corpus, a manifest's --image-root (or its folder), an "
                   "import's --image-root.")
@click.option("--clip-front", is_flag=True,
              help="Also serve clip-retrieval's web front at /clip-front/ (needs: pip install --no-deps clip-retrieval==2.45.0).")
def serve(indexes, host, port, max_batch, max_wait_ms, max_body, max_pixels, backend, verify, write_token_file,
          reload_interval, ray_address, shard_groups, replicas, ray_start_timeout, image_roots, clip_front):
    """Serve INDEXES ([NAME=]FOLDER ...) over HTTP: API, OpenAPI docs at /docs, web page at /.

    clip-retrieval back's API is served too (POST /knn-service, /metadata, GET /indices-list): point
    ClipClient at http://HOST:PORT/knn-service.

    Text queries are answered as soon as the indexes are open, from each model's cached text tower;
    the full model loads in the background meanwhile, and image queries and classification wait for
    it (GET /health says "models": loading, ready or failed). A first start loads the full model first.
    """
    import uvicorn

    from ..query import open_index
    from ..serve import create_app
    from ..serve.startup import attach_models

    from ..serve.admin import read_token

    try:
        token = read_token(write_token_file)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--write-token-file") from None
    if ray_address is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.UsageError("--ray needs Ray: pip install '.[ray]'") from None
    elif shard_groups != 2 or replicas != 1:
        raise click.UsageError("--shard-groups and --replicas need --ray")
    check_listen(host, port)
    front = None
    if clip_front:
        from ..serve.clipback import find_clip_front

        front = find_clip_front()
    specs = {}
    for spec in indexes:
        name, _, folder = spec.rpartition("=") if "=" in spec else (os.path.basename(os.path.normpath(spec)), "", spec)
        if not name or name in specs:
            raise click.BadParameter(f"two indexes named {name!r} (or an empty name); use NAME=FOLDER",
                                     param_hint="INDEXES")
        specs[name] = folder
    opened = {name: open_index(folder, None, backend=backend, verify=verify, warm=True) for name, folder in specs.items()}
    models = attach_models(opened)   # text towers now where cached, full models in the background
    pools = []
    if ray_address is not None:
        from ..scale import serve_on_ray

        actors = len(opened) * shard_groups * replicas  # shares sized for every index's actors
        try:
            for i in opened.values():
                pools.append(serve_on_ray(i, shard_groups, replicas, ray_address, backend=backend, actors=actors,
                                          start_timeout_s=ray_start_timeout))
        except BaseException:  # an actor that cannot be placed, Ctrl-C: stop what was started
            for p in reversed(pools):
                p.close()
            raise
    app = create_app(opened, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body=max_body, max_pixels=max_pixels,
                     write_token=token, reload_interval=reload_interval, clip_front=front, image_roots=image_roots,
                     models=models)
    writes = "writes on (token)" if token else "writes off"
    click.echo(f"serving {', '.join(f'{n} ({len(i)} items)' for n, i in opened.items())} on http://{host}:{port} "
               f"({writes}){'; clip front at /clip-front/' if front else ''}"
               f"{'; full models loading (text queries answered now)' if models.state() == 'loading' else ''}", err=True)
    if pools:
        click.echo(f"searching on Ray: {shard_groups} shard groups x {replicas} replicas per index", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        for p in reversed(pools):  # the first one started the local cluster
            p.close()
