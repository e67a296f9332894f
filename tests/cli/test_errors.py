"""Every user mistake on the command line is one line on stderr: exit 2 for usage errors, 1 for data
errors; never a traceback."""
import numpy as np
import pytest
from click.testing import CliRunner

from retrieval.cli import main
from tests.conftest import FLICKR, TINY, needs_shared

pytestmark = needs_shared
IDX = "{idx}"
BAD = [
    (["serve", IDX, "--port", "99999"], "must be at most 65535"),
    (["serve", IDX, "--port", "-1"], "--port"),
    (["serve", IDX, "--port", "http"], "not a whole number"),
    (["serve", IDX, "--max-body", "abc"], "not a size"),
    (["serve", IDX, "--max-body", "0"], "must be positive"),
    (["serve", IDX, "--max-batch", "0"], "must be positive"),
    (["serve", IDX, "--max-wait-ms", "nan"], "finite"),
    (["serve", IDX, "--max-pixels", "0"], "must be positive"),
    (["serve", "a=" + IDX, "a=" + IDX], "two indexes named"),
    (["build", "{csv}", "--out", "{file}", "--image-root", "{images}", "--model", "{tiny}"], "exists and is not a folder"),
    (["build", "{csv}", "--out", "/proc/nope/x", "--image-root", "{images}", "--model", "{tiny}"], "cannot create --out"),
    (["build", "{csv}", "--out", "{new}", "--image-root", "{images}", "--model", "{tiny}", "--device", "tpu"],
     "unknown device"),
    (["build", "{csv}", "--out", "{new}", "--batch-size", "0"], "must be positive"),
    (["build", "{csv}", "--out", "{new}", "--shard-size", "-5"], "must be positive"),
    (["build", "{csv}", "--out", "{new}", "--workers", "-1"], "at least 0"),
    (["build", "{csv}", "--out", "{new}", "--memory-budget", "lots"], "not a size"),
    (["build", "{csv}", "--out", "{new}", "--max-pixels", "0"], "must be positive"),
    (["build", "/no/such/corpus", "--out", "{new}"], "corpus not found"),
    (["classify", IDX, "{images}", "--classes", "{classes}", "--template", "{{}} and {{}}"], "exactly one bare {}"),
    (["classify", IDX, "{images}", "--classes", "{classes}", "--template", "{{0}}"], "exactly one bare {}"),
    (["classify", IDX, "{images}", "--classes", "{classes}", "--template", "a {{}} {{{{x}}}}"], "no other brace"),
    (["classify", IDX, "{images}", "--classes", "{classes}", "--batch-size", "0"], "must be positive"),
    (["classify", IDX, "{images}", "--classes", "{classes}", "--neighbours", "0"], "must be positive"),
    (["classify", IDX, "{images}", "--classes", "{classes}", "--captions", "-2"], "must be positive"),
    (["eval", IDX, "--max-queries", "-1"], "must be positive"),
    (["eval", IDX, "--seed", "-1"], "at least 0"),
    (["search", IDX, "a dog", "--k", "0"], "must be positive"),
    (["search", IDX, "a dog", "--alpha", "nan"], "finite"),
    (["search", IDX, "a dog", "--alpha", "inf"], "finite"),
    (["search", IDX, "a dog", "--lam", "2"], "must be in [0.0, 1.0]"),
    (["search", IDX, "a dog", "--candidates", "0"], "must be positive"),
    (["search", "/no/such/index", "a dog"], "not an index folder"),
    (["search", IDX, "--embedding", "{file}"], "is not a .npy file"),
    (["search", IDX, "--embedding", "{new}"], "cannot read"),
    (["search", IDX, "--embedding", "{matrix}"], "expected one vector"),
    (["search", IDX, "--embedding", "{short}"], "dim 5, index has 256"),
    (["search", IDX, "a dog", "--embedding", "{short}"], "exactly one of"),
    (["bias", IDX, "--nnn-k", "0"], "must be positive"),
    (["bias", IDX, "--bank-size", "0"], "must be positive"),
    (["bias", IDX, "--bank", "texts"], "needs at least one text"),
    (["verify", "/no/such/index"], "not an index folder"),
    (["info", "/no/such/index"], "not an index folder"),
    (["nope"], "No such command"),
]


@pytest.mark.parametrize("args,msg", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_usage_errors_are_one_line_exit_2(flickr_index, tmp_path, args, msg):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    np.save(tmp_path / "matrix.npy", np.ones((2, 256), np.float32))
    np.save(tmp_path / "short.npy", np.ones(5, np.float32))
    fill = {"idx": str(flickr_index), "csv": str(FLICKR / "captions.csv"), "images": str(FLICKR / "images"),
            "tiny": str(TINY), "file": str(tmp_path / "afile"), "new": str(tmp_path / "new"),
            "classes": str(tmp_path / "classes.txt"), "matrix": str(tmp_path / "matrix.npy"),
            "short": str(tmp_path / "short.npy")}
    r = CliRunner().invoke(main, [a.format(**fill) for a in args])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.output
    assert not (tmp_path / "new").exists()  # nothing written


def test_an_unexpected_failure_is_still_one_line(flickr_index, monkeypatch):
    import retrieval.store as store

    monkeypatch.setattr(store, "index_info", lambda folder: 1 / 0)
    r = CliRunner().invoke(main, ["info", str(flickr_index)])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "error: internal error (ZeroDivisionError: division by zero); run with -v for the traceback and report it"]


def test_search_by_a_saved_embedding(flickr_index, tmp_path):
    """--embedding F.npy searches with a stored vector (no model): an item's own image embedding finds it first."""
    import json

    from tests.conftest import read_layout

    img, _, meta = read_layout(flickr_index)
    np.save(tmp_path / "q.npy", img[42].astype(np.float16))
    r = CliRunner().invoke(main, ["search", str(flickr_index), "--embedding", str(tmp_path / "q.npy"), "--k", "3",
                                  "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == 3 and rows[0]["key"] == meta.column("key")[42].as_py() and rows[0]["score"] > 0.99


def test_a_reader_that_leaves_early_is_not_an_error(flickr_index, tmp_path):
    """`retrieval search ... | head -1`: the closed pipe ends the command quietly (exit 141, as SIGPIPE)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, read_layout

    np.save(tmp_path / "q.npy", read_layout(flickr_index)[0][0])
    p = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "search", str(flickr_index), "--embedding",
                          str(tmp_path / "q.npy"), "--k", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT)
    assert p.stdout.readline().split()[:2] == [b"rank", b"score"]
    p.stdout.close()
    assert p.wait(timeout=60) == 141 and p.stderr.read() == b""
