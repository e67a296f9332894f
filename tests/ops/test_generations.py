"""Multi-file updates as generations: a `retrieval bias` killed at any point leaves one bank wholly in
force; superseded files are collected one generation later; one writer at a time."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval import open_index
from retrieval.errors import IndexFolderError
from tests.conftest import bias_folder, needs_shared

pytestmark = needs_shared
BIAS = ["bias", "--bank", "corpus", "--bank-size", "48", "--ref-size", "512"]


def _nnn_results(folder):
    idx = open_index(folder)
    q = idx.embeddings(np.arange(0, 1000, 25), "text")
    return idx.search(q, 20, rerank="nnn")[1], idx.search(q, 20, rerank="bsap")[1]


def _run(folder, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "retrieval.cli", *BIAS, str(folder), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_during_bias_leaves_one_bank_wholly_in_force(flickr_index, tmp_path):
    old_folder, new_folder = tmp_path / "old", tmp_path / "new"
    shutil.copytree(flickr_index, old_folder)
    shutil.copytree(flickr_index, new_folder)
    assert _run(new_folder).wait(120) == 0
    old, new = _nnn_results(old_folder), _nnn_results(new_folder)
    assert not np.array_equal(old[0], new[0])  # the two banks rank differently
    seen = set()
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4):  # kill at different points of the writing
        folder = tmp_path / f"k{delay}"
        shutil.copytree(flickr_index, folder)
        gen = json.loads((folder / "manifest.json").read_text())["generation"]
        proc = _run(folder)
        target = folder / "bias" / f"g{gen + 1:06d}"
        deadline = time.time() + 60
        while not target.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = _nnn_results(folder)  # opens cleanly: every listed file checked
        is_old = all(np.array_equal(a, b) for a, b in zip(got, old))
        is_new = all(np.array_equal(a, b) for a, b in zip(got, new))
        assert is_old or is_new, delay
        seen.add("old" if is_old else "new")
        assert _run(folder).wait(120) == 0  # a rerun publishes the new bank over whatever was left
        assert all(np.array_equal(a, b) for a, b in zip(_nnn_results(folder), new))
    assert "old" in seen  # at least one kill landed mid-write


def test_superseded_generations_are_collected_one_publish_later(flickr_index, tmp_path):
    folder = tmp_path / "gc"
    shutil.copytree(flickr_index, folder)
    first = bias_folder(folder)
    assert _run(folder).wait(120) == 0
    second = bias_folder(folder)
    m = json.loads((folder / "manifest.json").read_text())
    assert second != first and first.is_dir()  # retired, still there for readers of the previous manifest
    assert m["retired"] and all(r.startswith(first.relative_to(folder).as_posix()) for r in m["retired"])
    (folder / "bias" / "g999999").mkdir()  # what a killed writer could leave
    (folder / "bias" / "g999999" / "stray.npy").write_bytes(b"x")
    assert _run(folder, "--bank-size", "40").wait(120) == 0
    third = bias_folder(folder)
    assert not first.exists() and second.is_dir() and third.is_dir() and not (folder / "bias" / "g999999").exists()
    assert sorted(p.name for p in (folder / "bias").iterdir()) == sorted([second.name, third.name])


def test_one_writer_at_a_time(flickr_index, tmp_path):
    from retrieval.ops import compute_biases
    from retrieval.store.lock import write_lock

    folder = tmp_path / "locked"
    shutil.copytree(flickr_index, folder)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from retrieval.store.lock import write_lock\n"
                               f"with write_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexFolderError, match="another retrieval command is writing"):
            compute_biases(folder, bank="corpus")
        r = _run(folder)
        assert r.wait(60) == 1 and "another retrieval command is writing" in r.stderr.read()
    finally:
        holder.kill()
        holder.wait()
    with write_lock(folder), write_lock(folder):  # re-entrant within one process
        compute_biases(folder, bank="corpus", bank_size=16)
