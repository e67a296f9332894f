import math

import faiss
import numpy as np
import pytest

from retrieval.store.combined import combine_query, combine_vectors
from retrieval.methods.rerank import (bsap_offsets, bsap_scores, clip_scores, hybrid_scores,
                              nnn_bias, nnn_scores, offset_search, rerank_scores, top_k)

# A hand example in 2-D: query q, candidates j1, j2, one auxiliary prompt a.
Q = np.array([[1.0, 0.0]], np.float32)
C = np.array([[0.8, 0.6], [0.6, 0.8]], np.float32)   # s(q, j) = 0.8, 0.6
A = np.array([[0.0, 1.0]], np.float32)               # s(j, a)  = 0.6, 0.8
TAU = 10.0


def test_bsap_hand_values():
    b1 = math.exp(8) / (math.exp(8) + math.exp(6))   # = sigmoid(2)
    b2 = math.exp(6) / (math.exp(6) + math.exp(8))   # = sigmoid(-2)
    np.testing.assert_allclose(bsap_scores(Q, C, A, TAU), [[b1, b2]], rtol=1e-5)
    np.testing.assert_allclose(bsap_offsets(C, A, TAU), [0.6, 0.8], rtol=1e-6)  # one prompt: LSE = τ s
    two = np.vstack([A, [[1.0, 0.0]]])               # second prompt equals the query direction
    b1 = math.exp(8) / (math.exp(8) + math.exp(6) + math.exp(8))
    np.testing.assert_allclose(bsap_scores(Q, C[:1], two, TAU), [[b1]], rtol=1e-5)


def test_hybrid_hand_values():
    """BSAP-H = s - (1 - λ) c_j: CLIP at λ = 1, BSAP's ranking at λ = 0, one scale in between."""
    lam = 0.3
    c1, c2 = 0.6, 0.8                                # one prompt: c_j = s(j, a)
    got = hybrid_scores(Q, C, A, TAU, lam)
    np.testing.assert_allclose(got, [[0.8 - 0.7 * c1, 0.6 - 0.7 * c2]], rtol=1e-6)
    np.testing.assert_allclose(hybrid_scores(Q, C, A, TAU, 1.0), clip_scores(Q, C), rtol=1e-6)
    b = bsap_scores(Q, C, A, TAU)
    assert np.argsort(-hybrid_scores(Q, C, A, TAU, 0.0)).tolist() == np.argsort(-b).tolist()
    with pytest.raises(ValueError, match="lambda"):
        hybrid_scores(Q, C, A, TAU, 1.5)


def test_nnn_hand_values():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    # s(r, j1) = 0.8, 0.6, 0.96 -> top-2 mean 0.88 ; s(r, j2) = 0.6, 0.8, 1.0 -> top-2 mean 0.9
    np.testing.assert_allclose(nnn_bias(C, ref, k=2), [0.88, 0.9], rtol=1e-6)
    np.testing.assert_allclose(nnn_bias(C, ref, k=1), [0.96, 1.0], rtol=1e-6)
    np.testing.assert_allclose(nnn_bias(C, ref, k=3), [(0.8 + 0.6 + 0.96) / 3, (0.6 + 0.8 + 1.0) / 3], rtol=1e-6)
    np.testing.assert_allclose(nnn_bias(C, ref, k=500), nnn_bias(C, ref, k=3))  # k above the bank: all of it
    np.testing.assert_allclose(nnn_scores(Q, C, np.array([0.5, 0.1]), alpha=0.75),
                               [[0.8 - 0.375, 0.6 - 0.075]], rtol=1e-6)


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_offset_search_equals_brute_force_bsap_and_nnn():
    items, q, bank, ref = _unit(3000, 16, 0), _unit(5, 16, 1), _unit(8, 16, 2), _unit(400, 16, 3)
    tau, k = 20.0, 25
    brute_b = bsap_scores(q, items, bank, tau)                      # b_j over the whole corpus
    _, ids = offset_search(q, items, bsap_offsets(items, bank, tau), k, chunk=700)
    want = np.argsort(-brute_b, axis=1, kind="stable")[:, :k]
    assert np.array_equal(np.sort(ids, 1), np.sort(want, 1))
    bias = nnn_bias(items, ref, k=16)
    s_nnn = nnn_scores(q, items, bias, alpha=0.75)
    got_s, got_i = offset_search(q, items, 0.75 * bias, k, chunk=1000)
    np.testing.assert_allclose(got_s, np.take_along_axis(s_nnn, got_i, 1), rtol=1e-5)
    assert np.array_equal(np.sort(got_i, 1), np.sort(np.argsort(-s_nnn, 1)[:, :k], 1))
    # the same through faiss: exact MIPS over combined vectors [e, -c_bsap, -c_nnn] . [q, 0, α]
    flat = faiss.IndexFlatIP(18)
    flat.add(combine_vectors(items, {"nnn": bias, "bsap": bsap_offsets(items, bank, tau)}))
    f_s, f_i = flat.search(combine_query(q, 18, nnn=0.75), k)
    assert np.array_equal(np.sort(f_i, 1), np.sort(got_i, 1))
    np.testing.assert_allclose(f_s, got_s, rtol=1e-4, atol=1e-5)


def test_exact_search_finds_items_that_plain_top_n_rerank_misses():
    items, q, bank = _unit(5000, 16, 4), _unit(20, 16, 5), _unit(4, 16, 6)
    tau = 30.0
    off = bsap_offsets(items, bank, tau)
    _, exact = offset_search(q, items, off, 10)
    clip_top = np.argsort(-(q @ items.T), 1)[:, :10]
    assert any(set(e) - set(c) for e, c in zip(exact.tolist(), clip_top.tolist()))


def test_rerank_mode_equals_brute_force_restricted_to_candidates():
    items, q, bank = _unit(500, 8, 7), _unit(3, 8, 8), _unit(5, 8, 9)
    cands = np.stack([items[np.random.default_rng(i).choice(500, 40, replace=False)] for i in range(3)])
    per_query = rerank_scores("bsap", q, cands, tau=15.0, bank=bank)
    for i in range(3):
        np.testing.assert_allclose(per_query[i], bsap_scores(q[i:i + 1], cands[i], bank, 15.0)[0], rtol=1e-5)
    np.testing.assert_allclose(rerank_scores("clip", q, cands), np.einsum("qd,qnd->qn", q, cands), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown rerank method"):
        rerank_scores("bm25", Q, C)
    with pytest.raises(ValueError, match="bank"):
        rerank_scores("bsap", Q, C)
    with pytest.raises(ValueError, match="biases"):
        rerank_scores("nnn", Q, C)
    with pytest.raises(ValueError, match="dim"):
        clip_scores(Q, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="empty"):
        bsap_offsets(C, np.zeros((0, 2)), 10.0)


def test_top_k_orders_and_breaks_ties_by_id():
    s, i = top_k(np.array([[0.1, 0.5, 0.5, 0.9]]), 3)
    assert i.tolist() == [[3, 1, 2]] and s.tolist() == [[0.9, 0.5, 0.5]]
    assert top_k(np.array([[1.0, 2.0]]), 10)[1].tolist() == [[1, 0]]


FASHION = __import__("tests.conftest", fromlist=["SHARED"]).SHARED / "data" / "embeddings" / "fashion-marqo-fashionclip-99pairs"


@pytest.mark.skipif(not FASHION.is_dir(), reason="../shared embeddings not present")
def test_methods_on_real_clip_geometry():
    """99 real Marqo-fashionCLIP image/title pairs: NNN (caption bank) lifts text->image R@1; hybrid holds it."""
    img = np.load(FASHION / "image_embeddings.npy")
    txt = np.load(FASHION / "text_embeddings.npy")
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)

    def r1(s):
        return float((s.argmax(1) == np.arange(len(s))).mean())

    base = r1(clip_scores(txt, img))
    assert base == pytest.approx(0.859, abs=0.002)  # the README's verified number
    assert r1(nnn_scores(txt, img, nnn_bias(img, txt, k=16), alpha=0.75)) >= base + 0.02
    # a corpus bank of every caption (the default size, 4,096, exceeds the 99): BSAP-H 0.899 vs 0.859
    assert r1(hybrid_scores(txt, img, txt, tau=100.0)) >= base + 0.03
