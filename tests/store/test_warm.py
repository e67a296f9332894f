"""Page warming (store.warm): which files a served folder asks the kernel for, in which order, within
which budget, and that ``open_index(warm=True)`` starts it."""
import os
import threading

import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.store import warm as W
from retrieval.store.integrity import listed_files
from retrieval.store.manifest import load_manifest

from tests.conftest import paired_vectors

MODEL = {"arch": "synthetic", "pretrained": None, "embed_dim": 32, "logit_scale": 100.0}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    x, t = paired_vectors(2000, 32)
    build_from_embeddings(root / "ivf", x, t, MODEL, shard_size=1000, index_key="IVF16,Flat")
    build_from_embeddings(root / "flat", x, t, MODEL, shard_size=1000, index_key="Flat")
    return root


def test_plan_takes_files_in_order_while_they_fit():
    files = [("a", 40), ("b", 70), ("c", 30), ("d", -1), ("e", 30)]
    assert W.warm_plan(files, 100) == ["a", "c", "e"]      # b does not fit; smaller ones after it do
    assert W.warm_plan(files, 39) == ["c"]
    assert W.warm_plan(files, 0) == []
    assert W.warm_plan([("z", 0)], 0) == ["z"]
    assert W.warm_plan(files, 10**9) == ["a", "b", "c", "e"]   # a size never recorded is not guessed


def test_order_is_index_files_then_offsets_then_vectors(folders):
    for name in ("ivf", "flat"):
        m = load_manifest(folders / name)
        order = [rel for rel, _ in W.warm_order(m)]
        assert len(order) == len(set(order)) and all((folders / name / rel).is_file() for rel in order)
        listed = {rel for rel, _ in listed_files(m)}
        assert set(order) <= listed
        kinds = ["index" if rel.startswith("faiss/") else "bias" if rel.startswith("bias/") else "npy" for rel in order]
        assert kinds == sorted(kinds, key=["index", "bias", "npy"].index), order
        assert "bias" in kinds
        if name == "ivf":
            assert {rel for rel in order if "trained" in rel}, "the shared coarse quantizers are warmed"
            assert "npy" not in kinds            # IVF SQfp16 shards hold their vectors in the codes
        else:
            assert "index" not in kinds and kinds.count("npy") >= 2
        assert not any(rel.startswith(("metadata/", "captions/", "fts/")) for rel in order)


def test_warm_files_asks_for_each_planned_file(folders, monkeypatch):
    m = load_manifest(folders / "flat")
    sizes = dict(W.warm_order(m))
    asked = []
    if hasattr(os, "posix_fadvise"):
        monkeypatch.setattr(W.os, "posix_fadvise", lambda fd, off, n, advice: asked.append((os.fstat(fd).st_size, advice)))
    plan = W.warm_files(folders / "flat", m, budget=sum(sizes.values()))
    assert plan == [rel for rel, _ in W.warm_order(m)]
    if hasattr(os, "posix_fadvise"):
        assert [s for s, _ in asked] == [sizes[rel] for rel in plan]
        assert {a for _, a in asked} == {os.POSIX_FADV_WILLNEED}
    small = W.warm_files(folders / "flat", m, budget=min(sizes.values()))
    assert len(small) >= 1 and all(sizes[rel] <= min(sizes.values()) for rel in small)


def test_warm_files_reads_through_where_there_is_no_fadvise(folders, monkeypatch):
    monkeypatch.delattr(W.os, "posix_fadvise", raising=False)
    read = []

    def spy(path, *a, **kw):
        f = open(path, *a, **kw)
        read.append(f)
        return f

    monkeypatch.setattr(W, "open", spy, raising=False)
    m = load_manifest(folders / "ivf")
    plan = W.warm_files(folders / "ivf", m, budget=10**9)
    assert plan and len(read) == len(plan) and all(f.closed for f in read)


def test_a_missing_file_is_skipped_not_raised(folders, tmp_path):
    fake = {"shards": [{"rows": 1, "files": {"image_index": "faiss/gone.index", "img_emb": "img_emb/gone.npy"},
                        "bytes": {"image_index": 10}}]}
    assert W.warm_order(fake) == [("faiss/gone.index", 10), ("img_emb/gone.npy", -1)]
    assert W.warm_files(folders / "ivf", fake, budget=100) == []
    assert W.warm_files(tmp_path, {"shards": []}, budget=100) == []


def test_open_warm_starts_it_and_searches_the_same(folders, monkeypatch):
    import retrieval.query.snapshot as snap

    seen, done = [], threading.Event()
    real = snap.warm_in_background

    def spy(folder, manifest, previous=None):
        seen.append(folder)
        th = real(folder, manifest, previous)
        th.join(30)
        done.set()
        return th

    monkeypatch.setattr(snap, "warm_in_background", spy)
    q = paired_vectors(5, 32, seed=3)[0]
    cold = open_index(folders / "ivf").search(q, 5)
    assert not seen                                   # a plain open warms nothing
    idx = open_index(folders / "ivf", warm=True)
    assert done.wait(30) and seen == [folders / "ivf"]
    got = idx.search(q, 5)
    assert (got[1] == cold[1]).all() and np.allclose(got[0], cold[0])


def test_a_reload_asks_only_for_files_the_previous_snapshot_did_not(folders, monkeypatch):
    m = load_manifest(folders / "ivf")
    every = [rel for rel, _ in W.warm_order(m)]
    assert W.warm_files(folders / "ivf", m, budget=10**9, skip=frozenset(every[1:])) == every[:1]
    asked = []
    monkeypatch.setattr(W, "warm_files", lambda folder, manifest, skip=frozenset(): asked.append(skip) or [])
    W.warm_in_background(folders / "ivf", m, previous=m).join(30)
    W.warm_in_background(folders / "ivf", m).join(30)
    assert asked == [frozenset(every), frozenset()]
