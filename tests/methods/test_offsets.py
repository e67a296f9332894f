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
