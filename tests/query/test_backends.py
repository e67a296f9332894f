import faiss
import numpy as np
import pytest

from retrieval.query.backends import FaissBackend, TorchBackend, merge_topk, pick_backend
from tests.conftest import unit_vectors


def _shards(x, sizes):
    out, start = [], 0
    for n in sizes:
        ix = faiss.IndexFlatIP(x.shape[1])
        ix.add(x[start:start + n])
        out.append(ix)
        start += n
    return out, np.cumsum([0] + sizes[:-1]).astype(np.int64)


@pytest.mark.parametrize("k", [1, 7, 100, 5000])
def test_faiss_and_torch_backends_equal_numpy_brute_force(k):
    x, q = unit_vectors(2000, 24, 0), unit_vectors(13, 24, 1)
    brute = q @ x.T
    want_i = np.argsort(-brute, axis=1, kind="stable")[:, :k]
    want_s = np.take_along_axis(brute, want_i, 1)
    indexes, offsets = _shards(x, [700, 300, 1000])
    for backend in (FaissBackend(indexes, offsets), TorchBackend([x[:700], x[700:1000], x[1000:]], device="cpu")):
        s, i = backend.search(q, k)
        assert s.shape == want_s.shape
        np.testing.assert_allclose(s, want_s, atol=1e-5)
        assert (i == want_i).mean() > 0.999  # float ties may swap


def test_torch_offsets_equal_brute_force():
    x, q = unit_vectors(1000, 16, 2), unit_vectors(4, 16, 3)
    off = np.random.default_rng(4).uniform(0, 0.3, 1000).astype(np.float32)
    s, i = TorchBackend([x], device="cpu", batch=3).search(q, 10, off)
    want = np.argsort(-(q @ x.T - off), axis=1)[:, :10]
    assert np.array_equal(i, want)


def test_merge_keeps_missing_ids_last():
    parts = [(np.array([[0.9, -np.inf]], np.float32), np.array([[3, -1]])), (np.array([[0.5]], np.float32), np.array([[0]]))]
    s, i = merge_topk(parts, np.array([0, 10]), 3)
    assert i.tolist() == [[3, 10, -1]]


def test_merge_of_one_part_keeps_it_or_sorts_it():
    s = np.array([[0.9, 0.9, 0.2, -np.inf], [0.5, 0.1, -np.inf, -np.inf]], np.float32)
    ids = np.array([[7, 2, 5, -1], [4, 0, -1, -1]])
    got_s, got_i = merge_topk([(s, ids)], np.array([100]), 4)
    assert got_i.tolist() == [[107, 102, 105, -1], [104, 100, -1, -1]] and np.array_equal(got_s, s)
    assert merge_topk([(s, ids)], np.array([0]), 4)[1] is ids           # sorted, no offset: as it is
    unsorted = (np.array([[0.1, 0.8, 0.5]], np.float32), np.array([[1, 2, 3]]))
    assert merge_topk([unsorted], np.array([0]), 3)[1].tolist() == [[2, 3, 1]]
    assert merge_topk([(s, ids)], np.array([0]), 2)[1].tolist() == [[7, 2], [4, 0]]   # wider than k: cut


def test_backend_choice():
    import torch

    assert pick_backend("torch") == "torch"
    if faiss.get_num_gpus() == 0 and not torch.cuda.is_available():
        assert pick_backend("auto") == "faiss-cpu"
        with pytest.raises(ValueError, match="no GPU"):
            FaissBackend([faiss.IndexFlatIP(4)], np.zeros(1, np.int64), gpu=True)
    with pytest.raises(ValueError, match="unknown backend"):
        pick_backend("annoy")
