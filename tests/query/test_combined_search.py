"""One combined index per modality replaces three (plain, BSAP-augmented, NNN-augmented): through an
opened folder it returns the ids the three separate indexes would, for every method and shard type."""
import math
import re

import faiss
import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.methods.rerank import offset_search


def _clustered(n, d, seed, centers=24):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _separate(key, vectors, params, centroids):
    """The index the previous format kept for one method: ``key`` over ``vectors`` (an IVF on the
    shard's own centroids, padded like the vectors; a PQ padded to a multiple of its sub-quantisers)."""
    d = vectors.shape[1]
    pq = re.search(r"PQ(\d+)", key)
    if pq:
        m = int(pq.group(1))
        vectors = np.hstack([vectors, np.zeros((len(vectors), math.ceil(d / m) * m - d), np.float32)])
        d = vectors.shape[1]
    ix = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    if centroids is not None and not pq:
        ivf = faiss.extract_index_ivf(ix)
        padded = np.zeros((len(centroids), d), np.float32)
        padded[:, :min(d, centroids.shape[1])] = centroids[:, :d]
        ivf.quantizer.add(padded)
        ivf.is_trained = True
    else:
        ix.train(vectors)
    ix.add(vectors)
    if params:
        faiss.ParameterSpace().set_index_parameters(ix, params)
    return ix, d


def _recall(got, want):
    return np.mean([len(set(a) & set(b)) / want.shape[1] for a, b in zip(got.tolist(), want.tolist())])


@pytest.mark.parametrize("key", ["Flat", "IVF16,Flat", "HNSW16", "IVF16,PQ6x4"])
def test_the_combined_index_answers_like_the_three_it_replaces(tmp_path, key):
    n, d = 4000, 16
    x, t = _clustered(n, d, 0), _clustered(n, d, 1)
    out = tmp_path / "idx"
    build_from_embeddings(out, x, t, {"arch": "synthetic", "logit_scale": 50.0}, shard_size=n, index_key=key,
                          recall_target=0.9)
    idx = open_index(out, backend="faiss-cpu")
    info = idx.manifest["shards"][0]["index"]["image"]
    stored = idx.embeddings(np.arange(n), "image")  # the fp16 values the combined index holds
    combined = idx.shard_set.index(0, "image")
    centroids = None
    if combined is not None and "IVF" in key:
        q_ix = faiss.extract_index_ivf(combined).quantizer
        centroids = q_ix.reconstruct_n(0, q_ix.ntotal)
    q = _clustered(200, d, 2)
    for method, scale in (("clip", 0.0), ("bsap", 1.0), ("nnn", 0.5)):
        got_s, got = idx.search(q, 10, rerank=method, alpha=scale)
        off = np.zeros(n, np.float32) if method == "clip" else idx.biases.all(method, "image")
        exact = offset_search(q, stored, scale * off, 10)[1]
        # every returned score is s - scale * c with the stored offsets, the shift taken off (lossless
        # codes; BSAP reports its balanced score, a monotone map of s - c: checked on clip and NNN)
        if method != "bsap" and "PQ" not in key:
            np.testing.assert_allclose(got_s, np.take_along_axis(q @ stored.T - scale * off, got, 1), atol=2e-6)
        if key == "Flat":  # a Flat shard is a BLAS scan: exact
            assert np.array_equal(np.sort(got, 1), np.sort(exact, 1))
            continue
        shift = 0.0 if method == "clip" else idx.biases.shift(method, "image")
        vec = stored if method == "clip" else np.hstack([stored, -(off - shift)[:, None]]).astype(np.float32)
        sep, dim = _separate(key if "HNSW" not in key else "HNSW16,Flat", vec, info["params"], centroids)
        qa = np.zeros((len(q), dim), np.float32)
        qa[:, :d] = q
        if method != "clip":
            qa[:, d] = scale
        want = sep.search(qa, 10)[1]
        if "IVF16,Flat" == key:  # the same lists probed, the same vectors: the same ids
            assert (np.sort(got, 1) == np.sort(want, 1)).mean() >= 0.995, method
        else:  # graphs and codebooks are trained anew: as good as the index it replaces
            assert _recall(got, exact) >= _recall(want, exact) - 0.05, method
