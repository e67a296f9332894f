"""One combined index per modality: [e, -(c_bsap - s_b), -(c_nnn - s_n)] searched with [q, β, α]."""
import faiss
import numpy as np
import pytest

from retrieval.store.combined import combine_query, combine_vectors, combined_layout
from retrieval.methods.rerank import bsap_offsets, nnn_bias, offset_search
from retrieval.store.faiss_index import build_faiss_index


def _clustered(n, d, seed, centers=32):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("key,d,want", [
    ("Flat", 512, ("Flat", 528)),               # padded to a multiple of 16: faiss's SIMD scanners
    ("IVF1024,SQfp16", 512, ("IVF1024,SQfp16", 528)),
    ("HNSW32,SQfp16", 768, ("HNSW32,SQfp16", 784)),
    ("IVF64,SQfp16", 16, ("IVF64,SQfp16", 32)),
    ("IVF256,PQ16", 512, ("IVF256,PQ16", 528)),
    ("IVF256,PQ64", 512, ("IVF256,PQ64", 576)),
    ("OPQ64_512,IVF16384_HNSW32,PQ64x8", 512, ("OPQ64_576,IVF16384_HNSW32,PQ64x8", 514)),
])
def test_combined_layout(key, d, want):
    assert combined_layout(key, d) == want
    faiss.index_factory(want[1], want[0], faiss.METRIC_INNER_PRODUCT)  # faiss accepts it


def test_combined_scores_are_s_minus_beta_and_alpha_offsets():
    x, q = _clustered(50, 8, 0), _clustered(3, 8, 1)
    cb, cn = np.linspace(-0.2, 0.3, 50).astype(np.float32), np.linspace(0.5, 0.1, 50).astype(np.float32)
    v = combine_vectors(x, {"bsap": cb, "nnn": cn}, {"bsap": 0.1, "nnn": 0.3})
    assert v.shape == (50, 10)
    s = q @ x.T
    np.testing.assert_allclose(combine_query(q, 10) @ v.T, s, atol=1e-6)  # plain CLIP
    np.testing.assert_allclose(combine_query(q, 10, bsap=1.0) @ v.T - 0.1, s - cb, atol=1e-6)
    np.testing.assert_allclose(combine_query(q, 10, nnn=0.7) @ v.T - 0.7 * 0.3, s - 0.7 * cn, atol=1e-6)
    np.testing.assert_array_equal(combine_vectors(x)[:, 8:], 0)  # no offsets yet: zeros
    with pytest.raises(ValueError, match="10 nnn offsets for 50 items"):
        combine_vectors(x, {"nnn": cn[:10]})
    with pytest.raises(ValueError, match="needs dim >= 10"):
        combine_vectors(x, dim=9)


def _combined_ivf(x, offsets, shifts, key="IVF32,SQfp16"):
    v = combine_vectors(x, offsets, shifts)
    return build_faiss_index(v, key, extra=2), v


def test_ivf_lists_and_probing_do_not_depend_on_the_offsets():
    """The coarse quantiser is trained with the extra coordinates at zero: the same lists hold the
    same items with or without offsets, and one nprobe serves plain, BSAP and NNN queries."""
    x, q, ref, bank = _clustered(6000, 16, 2), _clustered(20, 16, 3), _clustered(500, 16, 4), _clustered(8, 16, 5)
    cb, cn = bsap_offsets(x, bank, 20.0), nnn_bias(x, ref, k=8)
    shifts = {"bsap": float(cb.mean()), "nnn": float(cn.mean())}
    plain, _ = _combined_ivf(x, None, None)
    comb, _ = _combined_ivf(x, {"bsap": cb, "nnn": cn}, shifts)
    p_ivf, c_ivf = faiss.extract_index_ivf(plain), faiss.extract_index_ivf(comb)
    assert c_ivf.d == 18 and c_ivf.nlist == 32 and not c_ivf.by_residual
    np.testing.assert_array_equal(c_ivf.quantizer.reconstruct_n(0, 32)[:, 16:], 0)
    for i in range(32):
        assert p_ivf.invlists.list_size(i) == c_ivf.invlists.list_size(i)
    c_ivf.nprobe = 32  # full probe: every method is exact (up to fp16 rounding of the codes)
    x16 = x.astype(np.float16).astype(np.float32)
    for bsap, nnn, off, shift in ((0, 0, 0 * cn, 0.0), (1.0, 0, cb, shifts["bsap"]),
                                  (0, 0.3, 0.3 * cn, 0.3 * shifts["nnn"]), (0, 0.9, 0.9 * cn, 0.9 * shifts["nnn"])):
        want_s, want_i = offset_search(q, x16, off, 10)
        got_s, got_i = comb.search(combine_query(q, 18, bsap, nnn), 10)
        assert np.mean(got_i == want_i) > 0.97
        np.testing.assert_allclose(got_s - shift, want_s, atol=2e-3)


def _recall(got, want):
    return np.mean([len(set(a) & set(b)) / want.shape[1] for a, b in zip(got.tolist(), want.tolist())])


@pytest.mark.parametrize("key", ["IVF32,SQfp16", "IVF32,SQ8", "HNSW16,SQfp16", "IVF16,PQ6", "OPQ6_18,IVF16,PQ6"])
def test_combined_index_finds_each_methods_top_k_as_well_as_plain_cosine(key):
    """At the same search parameters, the combined index finds the exact s - αc top-10 about as well
    as it finds the cosine top-10."""
    x, q, ref = _clustered(5000, 16, 5), _clustered(30, 16, 6), _clustered(400, 16, 7)
    bias = nnn_bias(x, ref, k=8)
    fkey, dim = combined_layout(key, 16)
    ix = build_faiss_index(combine_vectors(x, {"nnn": bias}, {"nnn": float(bias.mean())}, dim), fkey, extra=dim - 16)
    faiss.ParameterSpace().set_index_parameters(ix, "efSearch=256" if "HNSW" in key else "nprobe=8")
    plain_recall = _recall(ix.search(combine_query(q, dim), 10)[1], offset_search(q, x, 0 * bias, 10)[1])
    nnn_recall = _recall(ix.search(combine_query(q, dim, nnn=0.75), 10)[1], offset_search(q, x, 0.75 * bias, 10)[1])
    assert nnn_recall >= min(0.9, plain_recall - 0.1), (plain_recall, nnn_recall)


def test_quantized_offsets_are_encoded_exactly_by_the_fp16_codes():
    from retrieval.store.combined import quantize_offsets

    rng = np.random.default_rng(11)
    x = _clustered(20000, 8, 12).astype(np.float16).astype(np.float32)
    shift = {"bsap": 0.8731, "nnn": 0.41}
    raw = {m: (s + 0.1 * rng.standard_normal(20000)).astype(np.float32) for m, s in shift.items()}
    q = {m: quantize_offsets(raw[m], shift[m]) for m in raw}
    for m in raw:  # at most half an fp16 step of the centred value
        assert (np.abs(q[m] - raw[m]) <= 2.0 ** -11 * np.abs(raw[m] - shift[m]) + 1e-7).all()
    v = combine_vectors(x, q, shift)
    ix = build_faiss_index(v, "IVF8,SQfp16", extra=2)
    faiss.extract_index_ivf(ix).make_direct_map()
    # each coordinate is within float32 rounding of an fp16 number: stored as exactly that number,
    # whatever rounding the encoder uses
    np.testing.assert_array_equal(ix.reconstruct_n(0, 20000), v.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(ix.reconstruct_n(0, 20000), v, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(quantize_offsets(q["nnn"], shift["nnn"]), q["nnn"])  # idempotent
