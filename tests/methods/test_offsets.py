"""The one-pass offsets (torch matmul, in-place log-sum-exp, top-k) equal the reference numpy
functions on every block boundary, k beyond the references, one item, and refuse bad shapes."""
import numpy as np
import pytest

from retrieval.methods.offsets import item_offsets
from retrieval.methods.rerank import bsap_offsets, nnn_bias
from tests.conftest import unit_vectors


@pytest.mark.parametrize("n,block,k,tau", [(1, 1024, 16, 50.0), (1000, 64, 16, 50.0), (257, 256, 5, 100.0),
                                            (300, 1024, 40, 15.0)])
def test_equal_to_the_reference_functions(n, block, k, tau):
    x, bank, refs = unit_vectors(n, 32, 1), unit_vectors(100, 32, 2), unit_vectors(30, 32, 3)
    got = item_offsets(x, bank, refs, tau, k, block)
    assert got["bsap"] == pytest.approx(bsap_offsets(x, bank, tau), abs=2e-6)
    assert got["nnn"] == pytest.approx(nnn_bias(x, refs, k), abs=2e-6)
    assert got["bsap"].dtype == got["nnn"].dtype == np.float32


def test_empty_items_and_bad_input():
    bank = unit_vectors(10, 8, 0)
    got = item_offsets(np.zeros((0, 8), np.float32), bank, bank, 50.0, 4)
    assert got["bsap"].shape == got["nnn"].shape == (0,)
    for args in ((unit_vectors(3, 8, 1), bank[:0], bank, 50.0, 4), (unit_vectors(3, 8, 1), bank, bank, 50.0, 0),
                 (unit_vectors(3, 4, 1), bank, bank, 50.0, 4), (unit_vectors(3, 8, 1), bank, bank, 0.0, 4)):
        with pytest.raises(ValueError):
            item_offsets(*args)


@pytest.mark.parametrize("same", [lambda b: b, lambda b: b.copy()])
def test_one_sample_for_bank_and_references(same):
    """When the bank and the references are the same rows (one array, or equal copies), the one
    matmul that serves both gives what the two reference functions give."""
    x, bank = unit_vectors(700, 32, 1), unit_vectors(120, 32, 2)
    got = item_offsets(x, bank, same(bank), 50.0, 16, 256)
    assert got["bsap"] == pytest.approx(bsap_offsets(x, bank, 50.0), abs=2e-6)
    assert got["nnn"] == pytest.approx(nnn_bias(x, bank, 16), abs=2e-6)


def test_a_build_samples_one_set_for_bank_and_references_when_it_can(tmp_path):
    """bank 'corpus' at bank_size == ref_size: the stored bank and references are the same sampled rows,
    per target (each still a random sample of the corpus); at another ref_size, separate samples."""
    from retrieval import build_from_embeddings
    from retrieval.ops.bias import compute_biases
    from tests.conftest import bias_folder

    n = 600
    build_from_embeddings(tmp_path / "a", unit_vectors(n, 32, 4), unit_vectors(n, 32, 5), {"arch": "t"},
                          rows=[{"key": f"k{i}"} for i in range(n)])
    for size, same in ((100, True), (150, False)):
        compute_biases(tmp_path / "a", bank="corpus", bank_size=100, ref_size=size, calibrate=0)
        b = bias_folder(tmp_path / "a")
        for mod in ("image", "text"):
            bank, refs = np.load(b / f"bank_bsap_{mod}.npy"), np.load(b / f"ref_nnn_{mod}.npy")
            assert len(bank) == 100 and len(refs) == size
            assert np.array_equal(bank, refs) is same
