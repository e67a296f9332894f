"""Float16 <-> float32 casts (store.cast): torch's kernels give numpy's values bit for bit, into new
arrays or strided outputs; the rule for when torch is used; numpy where torch cannot view the array."""
import subprocess
import sys

import numpy as np
import pytest

from retrieval.store import cast as cast_mod
from retrieval.store.cast import IMPORT_VALUES, MIN_VALUES, cast, use_torch


def edge_values(n: int, seed: int = 0) -> np.ndarray:
    """float32 values covering fp16's hard cases: subnormals, ties, overflow, infinities, NaN, -0."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 6, n)).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 65519.99, 1e-8, 5.96e-8,
                        2.98e-8, 6.1e-5, -6.1e-5, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11], np.float32)
    x[:len(special)] = special
    return x


@pytest.fixture
def through_torch(monkeypatch):
    """Force every cast through torch (the rule says yes whatever the size); yields the number of
    torch copies made so far (a one-item list)."""
    import torch

    monkeypatch.setattr(cast_mod, "use_torch", lambda n, loaded, least=MIN_VALUES: True)
    copies = [0]
    real = torch.Tensor.copy_

    def counted(self, *a, **k):
        copies[0] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", counted)
    yield copies


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_torch_casts_equal_numpy_bit_for_bit(through_torch):
    x = edge_values(1 << 17).reshape(-1, 128)
    h = cast(x, np.float16)
    assert h.dtype == np.float16 and h.shape == x.shape
    assert np.array_equal(h.view(np.uint16), x.astype(np.float16).view(np.uint16))
    back = cast(h, np.float32)
    assert np.array_equal(back.view(np.uint32), h.astype(np.float32).view(np.uint32))
    assert through_torch[0] == 2


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_cast_into_a_strided_output(through_torch):
    x = edge_values(4096 * 64, seed=1).reshape(4096, 64).astype(np.float16)
    out = np.full((4096, 80), 7.0, np.float32)
    got = cast(x, np.float32, out=out[:, :64])
    assert got.base is out or np.shares_memory(got, out)
    assert np.array_equal(out[:, :64], x.astype(np.float32), equal_nan=True)
    assert (out[:, 64:] == 7.0).all()   # nothing written past the view
    with pytest.raises(ValueError, match="cannot cast"):
        cast(x, np.float32, out=out)


def test_the_result_is_a_copy(through_torch):
    x = np.ones((256, 512), np.float16)
    y = cast(x, np.float16)
    y[0, 0] = 5
    assert x[0, 0] == 1


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_read_only_memory_map_source(tmp_path, through_torch):
    x = edge_values(1 << 16, seed=2).reshape(-1, 64).astype(np.float16)
    np.save(tmp_path / "v.npy", x)
    m = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert np.array_equal(cast(m[::2], np.float32), x[::2].astype(np.float32), equal_nan=True)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_arrays_torch_cannot_view_fall_back_to_numpy(through_torch):
    x = edge_values(1 << 16, seed=3).reshape(-1, 64)
    swapped = x.astype(">f4")                  # big-endian
    assert np.array_equal(cast(swapped, np.float16), x.astype(np.float16), equal_nan=True)
    reversed_rows = x[::-1]                      # a negative stride
    assert np.array_equal(cast(reversed_rows, np.float16), reversed_rows.astype(np.float16), equal_nan=True)
    assert through_torch[0] == 0
    ints = np.arange(1 << 16, dtype=np.int32)
    assert np.array_equal(cast(ints, np.float32), ints.astype(np.float32))
    wide = np.float64(1 + 2.0 ** -11 + 2.0 ** -40) * np.ones(1 << 16)   # float64 -> float16 rounds once
    assert np.array_equal(cast(wide, np.float16), wide.astype(np.float16))


def test_the_rule():
    assert not use_torch(MIN_VALUES - 1, loaded=True)       # too small to gain
    assert use_torch(MIN_VALUES, loaded=True)
    assert not use_torch(IMPORT_VALUES - 1, loaded=False)   # not worth the import
    assert use_torch(IMPORT_VALUES, loaded=False)
    assert not use_torch(IMPORT_VALUES - 1, loaded=True, min_values=IMPORT_VALUES)   # a read path's rows


def test_query_sized_row_reads_stay_on_numpy(tmp_path, monkeypatch):
    """``ShardVectors.rows`` (what filtered scans and re-scoring read) casts through torch only at a
    training sample's size, even with torch loaded."""
    import torch

    from retrieval.store.vectors import ShardVectors

    x = np.random.default_rng(0).standard_normal((70_000, 512)).astype(np.float16)
    np.save(tmp_path / "v.npy", x)
    shard = {"id": 0, "rows": len(x), "dim": 512, "files": {"img_emb": "v.npy"}, "index": {}}
    copies = []
    real = torch.Tensor.copy_
    monkeypatch.setattr(torch.Tensor, "copy_", lambda self, *a, **k: copies.append(1) or real(self, *a, **k))
    vec = ShardVectors(tmp_path, shard, "image")
    few = vec.rows(np.arange(0, 70_000, 7))            # 10k rows, 5M values: numpy
    assert np.array_equal(few, x[::7].astype(np.float32)) and copies == []
    many = vec.rows(np.arange(70_000))                  # 35.8M values: torch
    assert np.array_equal(many, x.astype(np.float32)) and copies == [1]


def test_small_casts_do_not_import_torch():
    code = ("import sys, numpy as np; from retrieval.store.cast import cast; "
            "cast(np.ones((1000, 512), np.float32), np.float16); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
