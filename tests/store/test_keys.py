import numpy as np
import pytest

from retrieval.store.faiss_index import build_faiss_index as build_index, tune_params
from retrieval.store.keys import choose_index_key, index_memory, ivf_centroids, sample_ids, train_size

GB = 2**30


@pytest.mark.parametrize("n,d,budget,expected", [
    (1, 512, GB, "Flat"),
    (9_999, 512, 10**6, "Flat"),                         # small shards are always exact
    (50_000, 512, 4 * GB, "HNSW32,Flat"),                # M capped at 32
    (2_000_000, 512, 4 * GB, "HNSW12,Flat"),             # M = floor((B/4N - d)/2) = 12
    (2_000_000, 512, 2_000_000 * (4 * 512 + 8 * 8), "HNSW8,Flat"),  # exactly the M=8 cost
    (200_000, 512, 200_000 * (4 * 512 + 8) + 10**7, "IVF2048,Flat"),  # HNSW8 does not fit, IVF-Flat does
    (1_000_000, 512, 160 * 2**20, "IVF4096,PQ129"),      # 128 sub-vectors of 4 dims + the offsets' own
    (3_000_000, 512, 600 * 2**20, "IVF8192,PQ129"),      # PQ257 (2 dims each) does not fit
    (5_000_000, 512, 1 * GB, "IVF8192,PQ129"),
    (50_000_000, 768, 16 * GB, "IVF8192,PQ257"),         # 256 sub-vectors of 3 dims; sqrt(N) lists
])
def test_choose_index_key_table(n, d, budget, expected):
    key = choose_index_key(n, d, budget)
    assert key == expected
    if key != "Flat":
        assert index_memory(key, n, d) <= budget


def test_choose_index_key_rejects_impossible_budget_and_bad_sizes():
    with pytest.raises(ValueError, match="too small"):
        choose_index_key(10_000_000, 512, 10**6)
    with pytest.raises(ValueError):
        choose_index_key(0, 512, GB)


def test_compressed_keys_put_the_offsets_in_a_sub_vector_of_their_own():
    from retrieval.store.combined import combined_layout
    from retrieval.store.keys import compressed, pool_size

    for key, d, dim in (("IVF4096,PQ129", 512, 516), ("IVF8192,PQ65", 512, 520), ("IVF32768,PQ257", 768, 771)):
        m = int(key.split("PQ")[1])
        assert combined_layout(key, d) == (key, dim) and dim // m * (m - 1) == d and compressed(key)
    assert not compressed("IVF1024,Flat") and not compressed("HNSW32,Flat")
    # the budget covers codes, ids, offsets, centroids and codebooks: 1M x (129 + 8 + 8) + 4 x 4096 x 516 + ...
    assert 150e6 < index_memory("IVF4096,PQ129", 1_000_000, 512) <= 160 * 2**20
    assert pool_size(10) == 400 and pool_size(100) == 4000


def test_the_key_is_chosen_for_the_whole_index_not_per_shard():
    from retrieval.store.keys import shard_key

    budget = 160 * 2**20
    assert shard_key(100_000, 512, budget, None, total=1_000_000) == "IVF4096,PQ129"   # ten such shards
    alone = shard_key(100_000, 512, budget)                  # judged alone, each shard would take the whole budget:
    assert alone == "IVF1024,PQ257" and 10 * index_memory(alone, 100_000, 512) > budget    # 10 x 27 MB codes
    assert shard_key(2_000, 512, budget, None, total=1_000_000) == "Flat"          # too small for 4096 lists


def test_centroid_rules():
    assert ivf_centroids(250_000) == 2048          # 4*sqrt(N) = 2000 -> 2^11
    assert ivf_centroids(100) == 2                 # never fewer than 39 points per list
    assert ivf_centroids(3_000_000) == 8192        # 6,928 -> 2^13
    assert ivf_centroids(10_000_000) == 4096       # 12,649 -> 2^14, but N x nlist <= 2^36: 2^12
    assert ivf_centroids(10_000_000, max_assign=None) == 16384
    assert ivf_centroids(100_000_000) == 8192      # never below sqrt(N) (10,000 -> 2^13)
    assert train_size("IVF1024,Flat", 10**6) == 102_400 and train_size("Flat", 10**6) == 0


def test_training_sample_is_random_not_a_prefix():
    ids = sample_ids(100_000, 1_000, seed=0)
    assert len(ids) == len(set(ids.tolist())) == 1_000
    assert ids.max() > 50_000 and not np.array_equal(ids, np.arange(1_000))
    assert np.array_equal(ids, np.sort(ids))
    assert np.array_equal(ids, sample_ids(100_000, 1_000, seed=0))


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_is_exact_inner_product():
    x = _unit(500, 32)
    idx = build_index(x, "Flat")
    q = x[:7]
    scores, ids = idx.search(q, 5)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert np.array_equal(ids, brute)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_ivf_tuning_reaches_recall_target():
    x = _unit(20_000, 32, seed=1)
    key = "IVF128,Flat"
    idx = build_index(x, key, seed=0)
    params = tune_params(idx, x, key, recall=0.9, k=10, n_queries=200)
    assert params.startswith("nprobe=")
    q = x[np.random.default_rng(5).choice(len(x), 200, replace=False)]
    _, got = idx.search(q, 10)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())])
    assert recall >= 0.85  # tuned on other self-queries of the same data
    assert tune_params(build_index(x[:100], "Flat"), x[:100], "Flat") == ""


def test_hnsw_tuning_sets_ef_search():
    x = _unit(3_000, 16, seed=2)
    idx = build_index(x, "HNSW16,Flat")
    assert tune_params(idx, x, "HNSW16,Flat", recall=0.9).startswith("efSearch=")


def test_build_index_checks_shape():
    with pytest.raises(ValueError, match="2-D"):
        build_index(np.zeros(10, np.float32), "Flat")


def test_forced_key_is_validated_and_falls_back_on_small_shards():
    from retrieval.store.faiss_index import validate_key
    from retrieval.store.keys import shard_key

    validate_key("IVF64,Flat", 32)
    with pytest.raises(ValueError, match="invalid faiss index key"):
        validate_key("IVF64,NoSuchThing", 32)
    assert shard_key(100_000, 512, GB, "IVF1024,Flat") == "IVF1024,Flat"
    assert shard_key(500, 512, GB, "IVF1024,Flat") == "Flat"  # last shard smaller than the list count
    assert shard_key(500, 512, GB, "HNSW16,Flat") == "HNSW16,Flat"  # needs no training
    assert shard_key(500, 512, GB, None) == "Flat"
