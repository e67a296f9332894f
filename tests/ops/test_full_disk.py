"""A full disk stops a build with one line (the path, what is committed); after freeing space the same
command resumes and the index equals an uninterrupted build.

The disk is a real 1.5 MB tmpfs when this machine lets the tests mount one (root with CAP_SYS_ADMIN);
elsewhere the kernel's per-process file-size limit (RLIMIT_FSIZE) makes the writes fail instead.
"""
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FLICKR, TINY, needs_shared, read_layout

pytestmark = needs_shared


def _build(out, preexec=None):
    cmd = [sys.executable, "-m", "retrieval.cli", "build", str(FLICKR / "captions.csv"), "--out", str(out),
           "--image-root", str(FLICKR / "images"), "--model", str(TINY), "--shard-size", "100", "--batch-size", "50",
           "--workers", "0", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def _mount(path, size):
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _limit_file_size(limit):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_full_disk_is_one_line_and_a_rerun_resumes(tmp_path, flickr_index):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "idx"
    mounted = os.geteuid() == 0 and _mount(disk, "700k")
    try:
        r = _build(out) if mounted else _build(out, _limit_file_size(80_000))
        assert r.returncode == 1, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and str(out) in line, line
        assert f"cannot write {out}/" in line and (not mounted or "no space left on device" in line)
        assert "committed" in line and "free space and re-run the same command to resume" in line
        if mounted:  # "free space": grow the disk
            assert subprocess.run(["mount", "-o", "remount,size=64m", str(disk)]).returncode == 0
        r = _build(out)
        assert r.returncode == 0, r.stderr
        img, txt, meta = read_layout(out)
        ref_img, ref_txt, ref_meta = read_layout(flickr_index)
        assert meta.column("key").to_pylist() == ref_meta.column("key").to_pylist()  # every item exactly once
        np.testing.assert_allclose(img.astype(np.float32), ref_img.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(txt.astype(np.float32), ref_txt.astype(np.float32), atol=2e-3)
    finally:
        if mounted:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["umount", str(disk)])


def test_a_failed_write_leaves_the_target_untouched(tmp_path, monkeypatch):
    import errno

    from retrieval.errors import StorageError
    from retrieval.store.atomic import write_bytes

    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=f"cannot write {target}: no space left on device"):
        write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
