"""Vectors stored once: SQfp16 codes decode to the fp16 embeddings; offsets patched in place."""
import faiss
import numpy as np
import pytest

from retrieval.store.combined import combine_vectors
from retrieval.store.faiss_index import build_faiss_index, index_rows
from retrieval.store.vectors import built_key, decode_all, decode_rows, keeps_npy, set_offsets

from tests.conftest import unit_vectors


@pytest.mark.parametrize("key,built,npy", [
    ("Flat", "Flat", True),
    ("IVF1024,Flat", "IVF1024,SQfp16", False),
    ("IVF1024", "IVF1024,SQfp16", False),
    ("IVF4096_HNSW32,Flat", "IVF4096_HNSW32,SQfp16", False),
    ("HNSW32", "HNSW32,SQfp16", False),
    ("HNSW32,Flat", "HNSW32,SQfp16", False),
    ("IVF256,SQfp16", "IVF256,SQfp16", False),
    ("IVF256,PQ16", "IVF256,PQ16", True),
    ("IVF256,SQ8", "IVF256,SQ8", True),
    ("OPQ16_64,IVF256,PQ16", "OPQ16_64,IVF256,PQ16", True),
])
def test_built_key_stores_exact_vectors_as_fp16_codes(key, built, npy):
    assert built_key(key) == built and keeps_npy(built) == npy


@pytest.mark.parametrize("key", ["IVF16,SQfp16", "HNSW8,SQfp16"])
def test_codes_give_back_the_fp16_embeddings_and_take_new_offsets_in_place(key, tmp_path):
    x = unit_vectors(3000, 16, 0).astype(np.float16)
    c = 0.05 * np.random.default_rng(1).standard_normal((2, 3000)).astype(np.float32)  # offsets' usual spread
    shifts = {"bsap": 0.2, "nnn": -0.1}
    zero = build_faiss_index(combine_vectors(x), key, extra=2)
    np.testing.assert_array_equal(decode_all(zero, 16), x)  # bit-exact: the index is the only copy
    rows = np.array([2999, 0, 17, 17])
    np.testing.assert_array_equal(decode_rows(zero, rows, 16), x[rows].astype(np.float32))
    want = combine_vectors(x, {"bsap": c[0], "nnn": c[1]}, shifts)
    assert set_offsets(zero, want[:, 16:], 16)
    np.testing.assert_array_equal(decode_all(zero, 16), x)  # the embeddings are untouched
    np.testing.assert_allclose(zero.reconstruct_n(0, 3000)[:, 16:], want[:, 16:], atol=2e-3)
    q = np.hstack([unit_vectors(5, 16, 2), np.full((5, 1), 1.0), np.full((5, 1), 0.5)]).astype(np.float32)
    direct = build_faiss_index(want, key, extra=2)  # built with the offsets from the start
    for ix in (zero, direct):
        faiss.ParameterSpace().set_index_parameters(ix, "efSearch=400" if "HNSW" in key else "nprobe=16")
    truth = np.argsort(-(q @ want.T), axis=1)[:, :10]
    got, ref = zero.search(q, 10)[1], direct.search(q, 10)[1]
    if "IVF" in key:  # the same lists with the same codes: the same answers
        np.testing.assert_array_equal(got, ref)
    else:  # the graph was built on [e, 0, 0]: it still finds the offset top-k
        assert np.mean([len(set(a) & set(b)) for a, b in zip(got, truth)]) >= 9.5
    faiss.write_index(zero, str(tmp_path / "x.faiss"))
    assert index_rows(tmp_path / "x.faiss") == 3000


def test_lossy_codes_are_not_patched():
    x = unit_vectors(3000, 16, 3)
    ix = build_faiss_index(combine_vectors(x), "IVF16,SQ8", extra=2)
    assert not set_offsets(ix, np.zeros((3000, 2), np.float32), 16)


def test_a_first_build_writes_each_index_once_searchable_then_once_with_its_offsets(tmp_path, monkeypatch):
    """The shards wait as npy until the vectors are all in; each index is written once searchable (zero
    offsets, generation 4), then once with its offsets (generation 5)."""
    import retrieval.store.coarse as coarse_mod
    import retrieval.store.offsets as offsets_mod
    import retrieval.store.shard as shard_mod
    from retrieval import build_from_embeddings, open_index

    written = []
    for mod in (offsets_mod, shard_mod, coarse_mod):
        real = mod.save_faiss
        monkeypatch.setattr(mod, "save_faiss", lambda path, index, real=real: (written.append(path.name), real(path, index)))
    x = unit_vectors(3000, 16, 4)
    build_from_embeddings(tmp_path / "idx", x, x, {"arch": "synthetic"}, shard_size=1000, index_key="IVF8,Flat")
    indexes = sorted(n for n in written if not n.startswith("trained"))
    assert indexes == sorted(f"{m}_{k:04d}_g{g:06d}.index" for m in ("image", "text") for k in range(3) for g in (4, 5))
    assert not (tmp_path / "idx" / "img_emb").exists()  # the staging npy is gone
    idx = open_index(tmp_path / "idx")
    ix = idx.shard_set.index(1, "image")
    faiss.extract_index_ivf(ix).make_direct_map()
    stored = ix.reconstruct_n(0, 1000)[:, 16:18]  # the offsets coordinates, as written
    want = -(idx.biases.per_shard("nnn", "image")[1] - idx.biases.shift("nnn", "image"))
    np.testing.assert_allclose(stored[:, 1], want, atol=1e-6)
