"""Bias-augmented approximate indexes: layout rule, centroid reuse, exactness, α-independence."""
import logging

import faiss
import numpy as np
import pytest

from retrieval.methods.augmented import augment_query, augment_vectors, augmented_layout, build_augmented
from retrieval.store.faiss_index import build_faiss_index as build_index
from retrieval.methods.rerank import nnn_bias, offset_search

from tests.conftest import bias_folder


def _clustered(n, d, seed, centers=32):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("key,d,want", [
    ("Flat", 512, ("Flat", 513)),
    ("IVF1024,Flat", 512, ("IVF1024,Flat", 513)),
    ("HNSW32,Flat", 768, ("HNSW32,Flat", 769)),
    ("IVF256,PQ16", 512, ("IVF256,PQ16", 528)),
    ("OPQ64_512,IVF16384_HNSW32,PQ64x8", 512, ("OPQ64_576,IVF16384_HNSW32,PQ64x8", 513)),
])
def test_augmented_layout(key, d, want):
    assert augmented_layout(key, d) == want
    faiss.index_factory(want[1], want[0], faiss.METRIC_INNER_PRODUCT)  # faiss accepts it


def test_augment_vectors_and_query_give_s_minus_alpha_c():
    x, q = _clustered(50, 8, 0), _clustered(3, 8, 1)
    c = np.linspace(-0.2, 0.3, 50).astype(np.float32)
    got = augment_query(q, 0.7, 12) @ augment_vectors(x, -c, 12).T
    np.testing.assert_allclose(got, q @ x.T - 0.7 * c, atol=1e-6)
    with pytest.raises(ValueError, match="cannot augment"):
        augment_vectors(x, c[:10], 12)


def test_ivf_augmented_reuses_centroids_and_is_exact_with_full_probe():
    x, q, ref = _clustered(6000, 16, 2), _clustered(20, 16, 3), _clustered(500, 16, 4)
    plain = build_index(x, "IVF32,Flat")
    bias = nnn_bias(x, ref, k=8)
    shift = float(bias.mean())
    aug = build_augmented(plain, "IVF32,Flat", x, bias, shift)
    p_ivf, a_ivf = faiss.extract_index_ivf(plain), faiss.extract_index_ivf(aug)
    assert a_ivf.d == 17 and a_ivf.nlist == 32
    # coarse assignment of [e, .] equals the plain index's: every list holds the same items
    for i in range(32):
        assert p_ivf.invlists.list_size(i) == a_ivf.invlists.list_size(i)
    a_ivf.nprobe = 32
    for alpha in (0.3, 0.9):  # one augmented index serves any α
        want_s, want_i = offset_search(q, x, alpha * bias, 10)
        got_s, got_i = aug.search(augment_query(q, alpha, 17), 10)
        assert np.array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s - alpha * shift, want_s, atol=1e-5)


def _recall(got, want):
    return np.mean([len(set(a) & set(b)) / want.shape[1] for a, b in zip(got.tolist(), want.tolist())])


@pytest.mark.parametrize("key", ["IVF32,SQ8", "HNSW16,Flat", "IVF16,PQ8"])
def test_other_index_types_match_the_plain_index_recall(key):
    """The augmented index finds the exact s - αc top-10 about as well as the plain index finds the cosine top-10."""
    x, q, ref = _clustered(5000, 16, 5), _clustered(30, 16, 6), _clustered(400, 16, 7)
    plain = build_index(x, key)
    bias = nnn_bias(x, ref, k=8)
    aug = build_augmented(plain, key, x, bias, float(bias.mean()))
    for ix in (plain, aug):
        faiss.ParameterSpace().set_index_parameters(ix, "efSearch=256" if "HNSW" in key else "nprobe=16")
    plain_recall = _recall(plain.search(q, 10)[1], offset_search(q, x, 0 * bias, 10)[1])
    aug_recall = _recall(aug.search(augment_query(q, 0.75, aug.d), 10)[1], offset_search(q, x, 0.75 * bias, 10)[1])
    assert aug_recall >= min(0.9, plain_recall - 0.15)


def test_ivf_index_folder_exact_search_through_stored_augmented_indexes(tmp_path, caplog):
    from retrieval import build_from_embeddings
    from retrieval import open_index

    x, t = _clustered(12000, 16, 8), _clustered(12000, 16, 9)
    folder = tmp_path / "idx"
    build_from_embeddings(folder, x, t, {"arch": "synthetic", "logit_scale": 50.0}, shard_size=4000,
                          index_key="IVF32,Flat", recall_target=0.99)
    assert len(list(bias_folder(folder).glob("aug_*.faiss"))) == 3 * 2 * 2  # shards x methods x modalities
    from retrieval import index_info
    from retrieval.store.info import format_info

    assert "12/12 augmented indexes" in format_info(index_info(folder))
    idx = open_index(folder, backend="faiss-cpu")
    q = _clustered(25, 16, 10)
    x = idx.embeddings(np.arange(len(idx)), "image")  # the stored fp16 vectors
    bias = np.concatenate([np.load(p) for p in sorted(bias_folder(folder).glob("nnn_image_*.npy"))])
    plain_recall = _recall(idx.search(q, 10)[1], offset_search(q, x, 0 * bias, 10)[1])
    for alpha in (0.5, 1.0):  # as good as the plain index at its tuned nprobe, for any α
        want_s, want_i = offset_search(q, x, alpha * bias, 10)
        got_s, got_i = idx.search(q, 10, rerank="nnn", alpha=alpha)
        assert _recall(got_i, want_i) >= plain_recall - 0.1
        same = got_i == want_i
        np.testing.assert_allclose(got_s[same], want_s[same], atol=1e-4)  # shift added back
    # without the stored files (a folder whose biases were computed without them): warned, and the
    # exact numpy scan answers
    import json

    m = json.loads((folder / "manifest.json").read_text())
    for p in bias_folder(folder).glob("aug_nnn_image_*.faiss"):
        del m["bias"]["files"][p.relative_to(folder).as_posix()]
        p.unlink()
    (folder / "manifest.json").write_text(json.dumps(m))
    idx = open_index(folder, backend="faiss-cpu")
    with caplog.at_level(logging.WARNING):
        got_s, got_i = idx.search(q, 10, rerank="nnn", alpha=0.5)
    assert "no augmented index" in caplog.text
    want_s, want_i = offset_search(q, x, 0.5 * bias, 10)
    assert np.array_equal(got_i, want_i)
