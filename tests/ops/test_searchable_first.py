"""Searchable first, debiased next: a build publishes the folder searchable (plain CLIP) before it
computes the BSAP/NNN offsets, and BSAP/NNN queries are refused as pending until those are published."""
import copy
import json
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, make_image, needs_shared, unit_vectors

D = 32


def _embeddings(n: int = 600):
    img = unit_vectors(n, D, 1)
    txt = unit_vectors(n, D, 2)
    txt[::7] = 0  # some items without a caption
    return img, txt


def _results(folder, method: str):
    from retrieval import open_index

    idx = open_index(folder)
    return idx.search(unit_vectors(5, D, 9), k=10, rerank=method)


def test_one_build_publishes_searchable_then_debiased(tmp_path, monkeypatch):
    import retrieval.store.indexer as indexer
    from retrieval import build_from_embeddings

    seen = []
    real = indexer.publish

    def spy(out, manifest):
        seen.append(copy.deepcopy({k: manifest.get(k) for k in ("complete", "bias", "bias_pending")}))
        return real(out, manifest)

    monkeypatch.setattr(indexer, "publish", spy)
    m = build_from_embeddings(tmp_path / "a", *_embeddings(), {"arch": "synthetic"}, shard_size=200,
                              index_key="IVF4,Flat")
    assert [s["complete"] for s in seen[-2:]] == [True, True]
    searchable, debiased = seen[-2:]
    assert searchable["bias"] is None and searchable["bias_pending"] == {"bank": "corpus"}
    assert debiased["bias"] and debiased["bias_pending"] is None
    assert "bias_pending" not in m and m["bias"]["bank"] == "corpus"


def test_bias_later_serves_clip_refuses_methods_then_completes_identically(tmp_path):
    from retrieval import IndexFolderError, add_embeddings, build_from_embeddings, format_info, index_info, open_index
    from retrieval.ops import compute_biases

    img, txt = _embeddings()
    full = build_from_embeddings(tmp_path / "full", img, txt, {"arch": "synthetic"}, shard_size=200,
                                 index_key="IVF4,Flat")
    m = build_from_embeddings(tmp_path / "later", img, txt, {"arch": "synthetic"}, shard_size=200,
                              index_key="IVF4,Flat", bias_later=True)
    assert m["complete"] and "bias" not in m and m["bias_pending"]["bank"] == "corpus"
    assert "pending (bank corpus)" in format_info(index_info(tmp_path / "later"))
    s_clip, i_clip = _results(tmp_path / "later", "clip")
    s_ref, i_ref = _results(tmp_path / "full", "clip")
    np.testing.assert_array_equal(i_clip, i_ref)   # plain CLIP already what the finished folder gives
    for method in ("bsap", "hybrid", "nnn"):       # never plain CLIP in disguise
        with pytest.raises(IndexFolderError, match="still being computed"):
            _results(tmp_path / "later", method)
    idx = open_index(tmp_path / "later")
    for wrapped in (lambda: idx.search(unit_vectors(1, D, 9), k=10, rerank="nnn", dedup=0.9),   # dedup
                    lambda: idx.search(k=10).like(3, 4).rerank("bsap").to_arrays(),               # examples
                    lambda: idx.search(unit_vectors(1, D, 9), k=10, rerank="nnn", candidates=50)):
        with pytest.raises(IndexFolderError, match="still being computed"):
            wrapped()
    compute_biases(tmp_path / "later", bank="corpus")
    m = json.loads((tmp_path / "later" / "manifest.json").read_text())
    assert "bias_pending" not in m and m["bias"]["bank"] == "corpus"
    for method in ("bsap", "nnn"):
        got, ref = _results(tmp_path / "later", method), _results(tmp_path / "full", method)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_allclose(got[0], ref[0], atol=1e-6)
    assert full["bias"]["shift"] == m["bias"]["shift"]


def test_rows_added_while_offsets_are_pending_get_them_with_the_rest(tmp_path):
    from retrieval import add_embeddings, build_from_embeddings
    from retrieval.ops import compute_biases

    img, txt = _embeddings()
    build_from_embeddings(tmp_path / "p", img, txt, {"arch": "synthetic"}, shard_size=200, index_key="IVF4,Flat",
                          bias_later=True)
    extra_img, extra_txt = unit_vectors(50, D, 5), unit_vectors(50, D, 6)
    add_embeddings(tmp_path / "p", extra_img, extra_txt, [{"key": f"new{i}"} for i in range(50)])
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["bias_pending"] and not any(i.get("pending") for s in m["shards"] for i in s["index"].values())
    from retrieval import open_index

    q = extra_img[:3]
    assert [int(r[0]) for r in open_index(tmp_path / "p").search(q, k=1, target="image")[1]] == [600, 601, 602]
    compute_biases(tmp_path / "p", bank="corpus")
    s, ids = open_index(tmp_path / "p").search(q, k=1, target="image", rerank="nnn")
    assert ids[:, 0].tolist() == [600, 601, 602]   # the appended rows have offsets like the rest


def test_http_refuses_pending_methods_with_a_409_naming_why(tmp_path):
    from starlette.testclient import TestClient

    from retrieval import build_from_embeddings, create_app, open_index

    img, txt = _embeddings()
    build_from_embeddings(tmp_path / "h", img, txt, {"arch": "synthetic"}, shard_size=200, index_key="IVF4,Flat",
                          bias_later=True)
    idx = open_index(tmp_path / "h")
    idx.clip = types.SimpleNamespace()  # synthetic index: queries by embedding only
    client = TestClient(create_app({"h": idx}))
    vec = unit_vectors(1, D, 3)[0].tolist()
    r = client.post("/search", json={"embedding": vec, "rerank": "nnn"})
    assert r.status_code == 409 and "still being computed" in r.json()["detail"]
    r = client.post("/search", json={"embedding": vec})
    assert r.status_code == 200 and len(r.json()["results"]) == 10


KILLED_BUILD = """
import os, signal, sys
import retrieval.ops.bias as bias
bias.apply_biases = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # dies as the offsets start
from retrieval import build_index
build_index(sys.argv[1], sys.argv[2], sys.argv[3], shard_size=16, batch_size=16, workers=0, progress=False,
            device="cpu")
"""


@needs_shared
def test_kill_9_between_the_stages_leaves_a_searchable_folder_a_rerun_completes(tmp_path, tiny_clip):
    from retrieval import IndexFolderError, build_index, open_index

    corpus = tmp_path / "c"
    for i in range(40):
        make_image(corpus / f"{i:03d}.jpg", color=(i * 6, 255 - i * 6, (i * 37) % 256)).with_suffix(".txt") \
            .write_text(f"a photo of thing {i}")
    out, ref = tmp_path / "killed", tmp_path / "ref"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(corpus), str(out), str(TINY)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and "bias" not in m and m["bias_pending"] == {"bank": "generic"}
    idx = open_index(out, tiny_clip)
    assert idx.search("a photo of thing 3").limit(5).to_list()   # searchable
    with pytest.raises(IndexFolderError, match="still being computed"):
        idx.search("a photo of thing 3").rerank("bsap").limit(5).to_list()
    kw = dict(shard_size=16, batch_size=16, workers=0, progress=False, clip=tiny_clip)
    m = build_index(corpus, out, **kw)    # the same command again: completes the second stage
    assert m["bias"]["bank"] == "generic" and "bias_pending" not in m
    build_index(corpus, ref, **kw)        # uninterrupted
    for method in ("bsap", "nnn"):
        got = open_index(out, tiny_clip).search("a photo of thing 3").rerank(method).limit(8).to_list()
        want = open_index(ref, tiny_clip).search("a photo of thing 3").rerank(method).limit(8).to_list()
        assert [g["key"] for g in got] == [w["key"] for w in want]
