"""The ``retrieval`` command line: a thin click group; one module per command group."""
from __future__ import annotations

import logging
import sys

import click

from ..errors import RetrievalError
from . import build, classify, search, serve


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RetrievalError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: committed shards are kept; re-run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """CLIP retrieval engine: build sharded FAISS indexes over image-text corpora; search (clip, BSAP, BSAP-H,
    NNN), classify with X-MoRe, evaluate, and serve them over HTTP."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _command in (build.build, build.info, build.verify, search.search, build.bias, classify.classify,
                 classify.evaluate, serve.serve):
    main.add_command(_command)
