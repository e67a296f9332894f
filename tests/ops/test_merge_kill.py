"""kill -9 in the middle of a `retrieval bias` or `retrieval compact` on a merged folder (while it merges
again), of a `retrieval delete` or of an append leaves the old folder or the new one, merged either way
and searched through its merged index, never a stale or half-written one; a rerun completes."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import open_index
from retrieval.cli import main
from retrieval.store.layout import merge_is_stale
from retrieval.store.manifest import load_manifest
from tests.ops.test_merge import N, NLIST, SHARD, _build, _queries, _searches

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
COMMANDS = {"bias": ["bias", "--bank", "corpus", "--bank-size", "300", "--ref-size", "300", "--calibrate-pairs", "0"],
            "compact": ["compact", "--threshold", "0.3"], "delete": ["delete"] + [f"k{i}" for i in range(1, N, 7)]}
# an append (the Python API, in its own process) of the queries themselves: they rank first once added
ADD = """import sys
from retrieval.ops.add import add_embeddings
from tests.ops.test_merge import _queries
q = _queries(11, 307)
add_embeddings(sys.argv[1], q, q, [{"key": f"new{i}", "image_path": "", "caption": "n", "part": 9} for i in range(len(q))])
"""


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """A merged folder of four IVF shards, half the rows of its first two shards deleted."""
    out = _build(tmp_path_factory.mktemp("mk") / "idx")
    assert CliRunner().invoke(main, ["merge", str(out)]).exit_code == 0
    open_index(out).delete([f"k{i}" for i in range(0, 2 * SHARD, 2)])
    return out


def _answers(folder):
    """Every search of ``_searches`` at nprobe = nlist, as (keys, scores) per query: compaction renumbers
    ids, not rows; and whether both modalities were searched through a merged index."""
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    through_merged = all(idx.shard_set.merged(mod) is not None for mod in ("image", "text"))
    out = []
    for s, ids in _searches(idx, _queries(11, 307)):
        keys = [[r["key"] for r in idx.meta.rows(row[row >= 0])] for row in ids]
        out.append((keys, np.round(s, 5)))
    return out, through_merged


def _equal(a, b) -> bool:
    return all(ka == kb and np.allclose(sa, sb, atol=2e-5) for (ka, sa), (kb, sb) in zip(a, b))


def _cli(folder, op):
    cmd = ["-c", ADD, str(folder)] if op == "add" else ["-m", "retrieval.cli", *COMMANDS[op][:1], str(folder),
                                                        *COMMANDS[op][1:]]
    return subprocess.Popen([sys.executable, *cmd], env=ENV, cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _written(folder, op, gen, existing) -> bool:
    """Whether ``op`` has begun writing its generation ``gen``: the merged lists that bias and compact
    write again; for a delete or an append, any file not in ``existing``."""
    if op in ("bias", "compact"):
        return (folder / "faiss" / f"merged_image_g{gen:06d}.ivfdata").exists()
    return any(p.is_file() and p not in existing and p.name != ".lock" for p in folder.rglob("*"))


@pytest.mark.parametrize("op", ["bias", "compact", "delete", "add"])
def test_kill_9_while_merging_again_leaves_a_merged_folder(merged, tmp_path, op):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(merged, old)
    shutil.copytree(merged, new)
    proc = _cli(new, op)
    assert proc.wait(120) == 0, proc.stderr.read()
    want_old, want_new = _answers(old), _answers(new)
    assert want_old[1] and want_new[1]             # both searched through their merged indexes
    if op == "compact":                                # compaction changes ids and files, not answers
        assert _equal(want_old[0], want_new[0]) and len(load_manifest(new)["shards"]) < len(load_manifest(old)["shards"])
    else:                                              # another bank, rows gone, rows added: other answers
        assert not _equal(want_old[0], want_new[0])
    seen = set()
    for delay in (0.0, 0.001, 0.004, 0.02):            # after the new generation's first files appear
        folder = tmp_path / f"k{delay}"
        shutil.copytree(merged, folder)
        gen, existing = load_manifest(folder)["generation"], set(folder.rglob("*"))
        proc = _cli(folder, op)
        deadline = time.time() + 120
        while not _written(folder, op, gen + 1, existing) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        m = load_manifest(folder)
        assert set(m["merged"]) == {"image", "text"} and not any(merge_is_stale(m, mod) for mod in m["merged"])
        got, through_merged = _answers(folder)          # opens cleanly: every listed file checked
        assert through_merged
        is_new = m["generation"] > gen
        assert _equal(got, (want_new if is_new else want_old)[0]), (delay, is_new)
        seen.add(is_new)
        rerun = _cli(folder, op)
        assert rerun.wait(120) == 0, rerun.stderr.read()
        got, through_merged = _answers(folder)
        assert through_merged and _equal(got, want_new[0])
        r = CliRunner().invoke(main, ["verify", str(folder)])
        assert r.exit_code == 0, r.output
    assert False in seen   # at least one kill landed before the publish, mid-merge
