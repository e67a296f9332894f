"""The ``retrieval`` command line: a thin click group; one module per command group."""
from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import DATA, USAGE, RetrievalError
from ..store.atomic import is_machine_error, storage_error
from . import build, classify, folder, search, serve


class _Group(click.Group):
    """Every error is one line on stderr: exit 2 for usage errors, 1 for data errors (see errors.py)."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as e:  # bad options and arguments, BadParameter included
            _fail(e.format_message(), USAGE)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        global _ran
        _ran = ctx.invoked_subcommand
        try:
            return super().invoke(ctx)
        except RetrievalError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            writes = ctx.invoked_subcommand in ("build", "import")
            _fail("interrupted" + (": committed shards are kept; re-run the same command to resume" if writes else ""),
                  130)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except BrokenPipeError:  # the reader left (`| head`): stop quietly, as a process killed by SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as e:
            if is_machine_error(e):
                _fail(str(storage_error(e, e.filename or "a file")), DATA)
            _unexpected(ctx, e)
        except Exception as e:  # a bug: still one line, the traceback with -v
            _unexpected(ctx, e)


_ran = None
# Read-only commands that hold no background work or temporary files: they leave through os._exit
# once their output is flushed, skipping ~0.5 s of interpreter teardown (torch's modules).
_FAST_EXIT = frozenset({"search", "info", "verify"})


def run() -> None:
    """The console entry point: :func:`main`, with the fast exit of the read-only commands."""
    try:
        main()
    except SystemExit as e:
        if _ran in _FAST_EXIT and (e.code is None or isinstance(e.code, int)):
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:  # a closed pipe: nothing more can be said
                pass
            logging.shutdown()
            os._exit(e.code or 0)
        raise


def _fail(message: str, code: int):
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _unexpected(ctx, e: Exception):
    if ctx.params.get("verbose") or logging.getLogger().isEnabledFor(logging.DEBUG):
        raise e
    _fail(f"internal error ({type(e).__name__}: {str(e)[:200]}); run with -v for the traceback and report it", DATA)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """CLIP retrieval engine: build sharded FAISS indexes over image-text corpora; search (clip, BSAP, BSAP-H,
    NNN), classify with X-MoRe, evaluate, and serve them over HTTP."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _command in (build.build, build.info, build.verify, build.delete, build.compact, search.search, build.bias,
                 classify.classify, classify.evaluate, serve.serve, folder.migrate, folder.regions, folder.merge, folder.export, folder.import_):
    main.add_command(_command)
