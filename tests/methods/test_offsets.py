"""The one-pass offsets (torch matmul, in-place log-sum-exp, top-k) equal the reference numpy
functions on every block boundary, k beyond the references, one item, and refuse bad shapes; in bf16
math on centred rows they stay within the fp16 rounding the stored offsets get anyway."""
import numpy as np
import pytest

from retrieval.methods.offsets import item_offsets, top_mean
from retrieval.store.bf16 import matmul_math, native_bf16
from retrieval.methods.rerank import bsap_offsets, nnn_bias
from tests.conftest import unit_vectors


@pytest.mark.parametrize("n,block,k,tau", [(1, 1024, 16, 50.0), (1000, 64, 16, 50.0), (257, 256, 5, 100.0),
                                            (300, 1024, 40, 15.0)])
def test_equal_to_the_reference_functions(n, block, k, tau):
    x, bank, refs = unit_vectors(n, 32, 1), unit_vectors(100, 32, 2), unit_vectors(30, 32, 3)
    got = item_offsets(x, bank, refs, tau, k, block, precision="fp32")
    assert got["bsap"] == pytest.approx(bsap_offsets(x, bank, tau), abs=2e-6)
    assert got["nnn"] == pytest.approx(nnn_bias(x, refs, k), abs=2e-6)
    assert got["bsap"].dtype == got["nnn"].dtype == np.float32


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp16_items_equal_their_float32_values(tmp_path, precision):
    """fp16 rows (a shard's memory-mapped npy, read-only, converted a block at a time) give exactly
    the offsets of the same values in float32; a strided array too."""
    x = unit_vectors(20_000, 32, 4).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    bank = unit_vectors(64, 32, 5)
    want = item_offsets(x.astype(np.float32), bank, bank, 50.0, 4, block=512, precision=precision)
    for items in (mapped, x[::-1][::-1], np.asfortranarray(x)):
        got = item_offsets(items, bank, bank, 50.0, 4, block=512, precision=precision)
        assert np.array_equal(got["bsap"], want["bsap"]) and np.array_equal(got["nnn"], want["nnn"])


def test_empty_items_and_bad_input():
    bank = unit_vectors(10, 8, 0)
    got = item_offsets(np.zeros((0, 8), np.float32), bank, bank, 50.0, 4)
    assert got["bsap"].shape == got["nnn"].shape == (0,)
    for args in ((unit_vectors(3, 8, 1), bank[:0], bank, 50.0, 4), (unit_vectors(3, 8, 1), bank, bank, 50.0, 0),
                 (unit_vectors(3, 4, 1), bank, bank, 50.0, 4), (unit_vectors(3, 8, 1), bank, bank, 0.0, 4)):
        with pytest.raises(ValueError):
            item_offsets(*args)
    with pytest.raises(ValueError, match="precision"):
        item_offsets(unit_vectors(3, 8, 1), bank, bank, 50.0, 4, precision="fp8")


def clip_like(n: int, d: int, seed: int, mean: np.ndarray) -> np.ndarray:
    """Unit rows sharing one large mean direction, as CLIP embeddings do (norm of the mean ~0.75)."""
    x = mean[None, :] + 0.6 * unit_vectors(n, d, seed)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("shared", [True, False])
def test_bf16_math_on_centred_rows_stays_within_the_fp16_rounding(shared):
    """bf16 products of centred rows: within 1.5e-4 of float64 at most and 3e-5 rms (the stored
    offsets are rounded to fp16 anyway: ~3e-5); the same products of the raw rows err several times
    more (what the centring is for). On a CPU without bf16 the mode falls back to float32 math."""
    d = 256
    mean = unit_vectors(1, d, 9)[0] * 1.2
    from retrieval.methods.offsets import BF16_MIN_ITEMS

    x, bank = clip_like(BF16_MIN_ITEMS, d, 1, mean), clip_like(1024, d, 2, mean)   # enough items for bf16
    refs = bank if shared else clip_like(1024, d, 3, mean)
    want_b = bsap_offsets(x.astype(np.float64), bank.astype(np.float64), 50.0)
    want_n = nnn_bias(x.astype(np.float64), refs.astype(np.float64), 16)
    got = item_offsets(x, bank, refs, 50.0, 16, 512, precision="bf16")
    for g, w in ((got["bsap"], want_b), (got["nnn"], want_n)):
        assert np.abs(g - w).max() < 1.5e-4 and np.sqrt(np.mean((g - w) ** 2)) < 3e-5
    import torch

    with torch.inference_mode(), matmul_math(torch, "bf16"):   # the raw rows in the same math
        raw = (torch.from_numpy(x) @ torch.from_numpy(refs).T).topk(16, 1).values.mean(1).numpy()
    raw_err, centred_err = np.sqrt(np.mean((raw - want_n) ** 2)), np.sqrt(np.mean((got["nnn"] - want_n) ** 2))
    if raw_err > 1e-6:                                          # bf16 math ran (else: no bf16 here)
        assert centred_err < raw_err / 3


def test_small_calls_run_in_fp32_math_whatever_is_asked():
    """Below BF16_MIN_ITEMS items (small appends) bf16's set-up costs more than it saves: fp32 math."""
    from retrieval.methods.offsets import BF16_MIN_ITEMS

    mean = unit_vectors(1, 256, 9)[0] * 1.2
    x, bank = clip_like(BF16_MIN_ITEMS - 1, 256, 1, mean), clip_like(512, 256, 2, mean)
    got = item_offsets(x, bank, bank, 50.0, 16, precision="bf16")
    assert got["bsap"] == pytest.approx(bsap_offsets(x, bank, 50.0), abs=2e-6)
    assert got["nnn"] == pytest.approx(nnn_bias(x, bank, 16), abs=2e-6)


def test_the_bf16_switch_is_restored_even_after_an_error():
    import torch

    mm = torch.backends.mkldnn.matmul
    before = mm.fp32_precision
    with pytest.raises(RuntimeError):
        with matmul_math(torch, "bf16"):
            assert mm.fp32_precision == "bf16"
            raise RuntimeError("boom")
    assert mm.fp32_precision == before
    bank = unit_vectors(50, 8, 0)
    item_offsets(unit_vectors(20, 8, 1), bank, bank, 50.0, 4, precision="bf16")
    assert mm.fp32_precision == before


@pytest.mark.parametrize("m,k", [(4096, 16), (4000, 16), (4103, 5), (100, 16), (1, 1), (64, 16)])
def test_top_mean_is_the_mean_of_the_k_largest(m, k):
    """Exact, group pruning or not, ties included (small integers), widths not a multiple of the group."""
    import torch

    rng = np.random.default_rng(m)
    gauss = rng.standard_normal((300, m)).astype(np.float32)
    last = gauss.copy()
    last[::2, -1] += 10                                    # the maximum in the last column (loose, for 4103)
    for s in (gauss, rng.integers(0, 6, (300, m)).astype(np.float32), last):
        want = np.sort(s, 1)[:, ::-1][:, :min(k, m)].mean(1)
        mean, none = top_mean(torch.from_numpy(s), min(k, m))
        assert mean.numpy() == pytest.approx(want, abs=1e-6) and none is None
        mean, top = top_mean(torch.from_numpy(s), min(k, m), with_max=True)   # the row maxima too
        assert mean.numpy() == pytest.approx(want, abs=1e-6) and np.array_equal(top.numpy(), s.max(1))


def test_native_bf16_reads_the_cpu_flags():
    assert native_bf16("fpu sse avx512f amx_bf16 amx_tile")
    assert native_bf16("fpu avx512_bf16 avx512f")
    assert not native_bf16("fpu sse avx2 avx512f")
    assert not native_bf16("")


@pytest.mark.parametrize("rows", [120, 1100])   # 1,100: grouped top-k, its group maxima the LSE's, 12 loose columns
@pytest.mark.parametrize("same", [lambda b: b, lambda b: b.copy()])
def test_one_sample_for_bank_and_references(same, rows):
    """When the bank and the references are the same rows (one array, or equal copies), the one
    matmul that serves both gives what the two reference functions give."""
    x, bank = unit_vectors(700, 32, 1), unit_vectors(rows, 32, 2)
    got = item_offsets(x, bank, same(bank), 50.0, 16, 256, precision="fp32")
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



@pytest.mark.parametrize("rounds,is_fp32,asked,kernel", [
    (True, False, "bf16", "bf16"),    # AMX: bf16 math on centred rows
    (True, False, "fp32", "fp32"),
    (False, True, "fp32", "bf16"),    # the mode's kernel computes float32 (EPYC, AVX512-BF16): faster, used
    (False, True, "bf16", "bf16"),
    (False, False, "bf16", "fp32")])  # neither: the default kernel
def test_the_kernel_follows_the_mode_probe(monkeypatch, rounds, is_fp32, asked, kernel):
    from retrieval.methods import offsets
    from retrieval.store import bf16

    used = []
    real = offsets.matmul_math
    monkeypatch.setattr(offsets, "matmul_math", lambda torch, p: used.append(p) or real(torch, p))
    monkeypatch.setattr(offsets, "BF16_MIN_ITEMS", 0)
    monkeypatch.setattr(bf16, "mode_rounds", lambda: rounds)
    monkeypatch.setattr(bf16, "mode_is_fp32", lambda: is_fp32)
    x, bank = unit_vectors(300, 32, 1), unit_vectors(100, 32, 2)
    got = offsets.item_offsets(x, bank, bank, 50.0, 4, precision=asked)
    assert used == [kernel]
    assert got["bsap"] == pytest.approx(bsap_offsets(x, bank, 50.0), abs=2e-6 if kernel == "fp32" or not rounds else 5e-4)
