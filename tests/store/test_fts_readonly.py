"""Keyword search on a read-only index folder: tantivy takes a lock file even to read, so a read-only
full-text folder is opened through a private folder of links to its files (nothing copied)."""
import os
import shutil
import subprocess

import pytest

from tests.conftest import unit_vectors


@pytest.fixture()
def folder(tmp_path):
    from retrieval import build_from_embeddings

    out = tmp_path / "idx"
    build_from_embeddings(out, unit_vectors(200, 16, 1), unit_vectors(200, 16, 2), {"arch": "t"},
                          rows=[{"key": f"k{i}", "caption": f"a red dog number {i}"} for i in range(200)])
    return out


def _keys(folder):
    from retrieval import open_index

    return [r["key"] for r in open_index(folder).query(text_match="dog number 17", k=3)[0]]


def test_a_folder_we_may_not_write_is_read_through_links(folder, monkeypatch):
    from retrieval.store import fts

    linked = []
    real = fts._linked
    monkeypatch.setattr(fts.os, "access", lambda p, mode: False)
    monkeypatch.setattr(fts, "_linked", lambda f: linked.append(real(f)) or linked[-1])
    before = {p: sorted(os.listdir(p)) for p in (folder / "fts").iterdir()}
    assert _keys(folder)[0] == "k17"
    assert linked and all(p.is_symlink() for p in linked[0].iterdir() if not p.name.endswith(".lock"))
    assert not any(p.name.endswith(".lock") and p.is_symlink() for p in linked[0].iterdir())
    assert {p: sorted(os.listdir(p)) for p in (folder / "fts").iterdir()} == before   # nothing written there


def test_a_read_only_mount(folder, tmp_path):
    """The real case, where this machine lets us bind-mount read-only (root, mount permitted)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "--bind", str(folder), str(mnt)],
                                                       capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root and a mount namespace that allows it)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        with pytest.raises(OSError):
            (mnt / "probe").write_text("x")
        assert _keys(mnt)[0] == "k17"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)   # lazy: the mmapped index may be open
