"""The coarse quantizer stored once (store.coarse): shard index files leave out the centroids they
share with the folder's kept trained index, readers attach one shared copy, and everything that
rewrites shards (bias, add, compact) keeps the structure; files that hold their own still load."""
import shutil

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.cli import main
from retrieval.errors import IndexFolderError
from retrieval.ops.add import add_embeddings
from retrieval.ops.compact import compact
from retrieval.query.shards import ShardSet
from retrieval.store.coarse import CoarseCache, read_index
from retrieval.store.generations import publish
from retrieval.store.integrity import listed_files, verify
from retrieval.store.manifest import load_manifest

from tests.conftest import paired_vectors

MODEL = {"arch": "synthetic", "pretrained": None, "embed_dim": 32, "logit_scale": 100.0}
N, SHARD, NLIST = 3000, 1000, 16
METHODS = ({}, {"rerank": "bsap"}, {"rerank": "nnn", "alpha": 0.75})


def _data(n=N, seed=0):
    return paired_vectors(n, 32, seed)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("coarse") / "idx"
    x, t = _data()
    build_from_embeddings(out, x, t, MODEL, shard_size=SHARD, index_key=f"IVF{NLIST},Flat")
    return out


def _stored_centroids(path) -> int:
    return faiss.extract_index_ivf(faiss.read_index(str(path))).quantizer.ntotal


def _results(folder, q):
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    return [idx.search(q, 10, **kw) for kw in METHODS]


def test_shard_files_leave_out_the_shared_centroids(built):
    m = load_manifest(built)
    trained = m["trained"]["image"]
    for s in m["shards"]:
        for mod in ("image", "text"):
            info = s["index"][mod]
            assert info["coarse"]["file"] == m["trained"][mod]["file"]
            assert info["coarse"]["sha256"] == m["trained"][mod]["sha256"]
            assert _stored_centroids(built / s["files"][f"{mod}_index"]) == 0
    assert _stored_centroids(built / trained["file"]) == NLIST
    rels = [rel for rel, _ in listed_files(m)]
    assert len(rels) == len(set(rels)) and trained["file"] in rels    # listed once, kept by every publish
    assert verify(built, m).ok


def test_a_file_with_its_own_centroids_answers_the_same(built, tmp_path):
    """The old layout (every shard file holding the centroids, no record) loads as it is, and the
    shared layout answers exactly what it answers."""
    old = tmp_path / "old"
    shutil.copytree(built, old)
    m = load_manifest(old)
    for s in m["shards"]:
        for mod in ("image", "text"):
            rel = s["files"][f"{mod}_index"]
            ix = read_index(old, rel, s["index"][mod])
            faiss.write_index(ix, str(old / rel))
            assert _stored_centroids(old / rel) == NLIST
            del s["index"][mod]["coarse"]
            s["sha256"].pop(f"{mod}_index"), s["bytes"].pop(f"{mod}_index"), s["sample"].pop(f"{mod}_index")
    publish(old, m)
    q = _data(20, seed=5)[0]
    for (s1, i1), (s2, i2) in zip(_results(built, q), _results(old, q)):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)


def test_the_shards_of_a_set_share_one_quantizer_object(built):
    m = load_manifest(built)
    cache = CoarseCache(built)
    loaded = [read_index(built, s["files"]["image_index"], s["index"]["image"], cache=cache) for s in m["shards"]]
    owner = cache.owner(m["trained"]["image"])
    assert {int(faiss.extract_index_ivf(ix).quantizer.this) for ix in loaded} == {
        int(faiss.extract_index_ivf(owner).quantizer.this)}
    served = ShardSet(built, m)
    assert len({int(faiss.extract_index_ivf(served.index(i, "image")).quantizer.this)
                for i in range(len(served.shards))}) == 1


def test_exact_at_full_nprobe(built):
    x, _ = _data()
    q = _data(30, seed=7)[0]
    _, got = open_index(built, search_params=f"nprobe={NLIST}").search(q, 10)
    stored = x.astype(np.float16).astype(np.float32)
    want = np.argsort(-(q @ stored.T), axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist())]) >= 0.99


def test_a_missing_trained_file_is_named(built, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    m = load_manifest(broken)
    (broken / m["trained"]["image"]["file"]).unlink()
    assert any(rel == m["trained"]["image"]["file"] for rel, _ in verify(broken, m).problems)
    with pytest.raises(IndexFolderError, match="trained_image"):
        open_index(broken).search(_data(1)[0], 5)
    r = CliRunner().invoke(main, ["verify", str(broken)])
    assert r.exit_code == 1 and "trained_image" in r.output


def test_a_stripped_file_the_manifest_does_not_explain_is_refused(built, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    m = load_manifest(broken)
    s = m["shards"][0]
    with pytest.raises(IndexFolderError, match="no coarse centroids"):
        read_index(broken, s["files"]["image_index"], {k: v for k, v in s["index"]["image"].items() if k != "coarse"})


def test_bias_add_and_compact_keep_one_copy(built, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(built, work)
    x, t = _data(1500, seed=9)
    add_embeddings(work, x[:700], t[:700], [{"key": f"a{i}"} for i in range(700)])
    add_embeddings(work, x[700:], t[700:], [{"key": f"b{i}"} for i in range(800)])
    r = CliRunner().invoke(main, ["bias", str(work), "--bank", "corpus", "--bank-size", "500", "--ref-size", "500"])
    assert r.exit_code == 0, r.output
    compact(work)
    m = load_manifest(work)
    for s in m["shards"]:
        info = s["index"]["image"]
        if info["key"] != "Flat":
            assert info["coarse"]["file"] == m["trained"]["image"]["file"]
            assert _stored_centroids(work / s["files"]["image_index"]) == 0
    assert verify(work, m).ok
    allx = np.concatenate([_data()[0], x]).astype(np.float16).astype(np.float32)
    q = _data(20, seed=11)[0]
    _, got = open_index(work, search_params=f"nprobe={NLIST}").search(q, 10)
    want = np.argsort(-(q @ allx.T), axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist())]) >= 0.99
