"""The offsets' matmul math is a choice the folder records: ``compute_biases(precision=...)`` and
``retrieval bias --offsets-precision`` write it in the bias section (``info`` shows it), fp32 offsets
equal the float32 reference functions to the fp16 grid of the codes, bf16 ones stay within their
bound, and appends to a generation compute their rows' offsets in that generation's math."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import bias_folder, unit_vectors

D, N = 256, 600


@pytest.fixture()
def folder(tmp_path):
    from retrieval import build_from_embeddings

    out = tmp_path / "idx"
    build_from_embeddings(out, unit_vectors(N, D, 1), unit_vectors(N, D, 2), {"arch": "t", "logit_scale": 100.0},
                          rows=[{"key": f"k{i}"} for i in range(N)], bias_bank="corpus")
    return out


def _stored(folder, method: str, modality: str = "image") -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(bias_folder(folder).glob(f"{method}_{modality}_*.npy"))])


@pytest.fixture()
def bf16_everywhere(monkeypatch):
    """bf16 math for calls of any size (BF16_MIN_ITEMS 0), so a 600-row folder runs it, on a CPU
    whose bf16 math mode rounds (AMX; recorded as bf16)."""
    from retrieval.methods import offsets
    from retrieval.store import bf16

    monkeypatch.setattr(offsets, "BF16_MIN_ITEMS", 0)
    monkeypatch.setattr(bf16, "mode_rounds", lambda: True)


@pytest.mark.parametrize("precision,tol", [("fp32", 8e-5), ("bf16", 4e-4)])
def test_recorded_and_within_its_bound(folder, precision, tol, bf16_everywhere):
    """fp32: the fp16 grid of the codes (offsets ~0.13 from their shift: steps of 6e-5); bf16: its bound
    (isotropic rows, nothing shared to centre away: ~1e-4 rms per product at d = 256). On a CPU
    without bf16 the math mode is a no-op: the bound holds all the more."""
    from retrieval.methods.rerank import bsap_offsets, nnn_bias
    from retrieval.ops.bias import compute_biases

    sec = compute_biases(folder, bank="corpus", bank_size=256, ref_size=256, calibrate=0, precision=precision)
    assert sec["precision"] == precision
    from retrieval import open_index

    img = open_index(folder).embeddings(np.arange(N), "image")
    bank = np.load(bias_folder(folder) / "bank_bsap_image.npy")
    refs = np.load(bias_folder(folder) / "ref_nnn_image.npy")
    assert np.abs(_stored(folder, "bsap") - bsap_offsets(img, bank, sec["tau"])).max() < tol
    assert np.abs(_stored(folder, "nnn") - nnn_bias(img, refs, sec["nnn_k"])).max() < tol


def test_a_small_folder_records_the_fp32_it_ran(folder):
    """Calls under BF16_MIN_ITEMS items run in fp32 whatever is asked: the section says what ran."""
    from retrieval.ops.bias import compute_biases

    assert compute_biases(folder, bank="corpus", bank_size=256, ref_size=256, calibrate=0,
                          precision="bf16")["precision"] == "fp32"


def test_a_cpu_whose_bf16_mode_computes_fp32_records_fp32(folder, monkeypatch, bf16_everywhere):
    """Where oneDNN's bf16 math mode computes float32 exactly (seen: AMD EPYC, AVX512-BF16, no AMX),
    the offsets asked in bf16 ran in float32: the folder says fp32."""
    from retrieval.methods.offsets import recorded_math
    from retrieval.ops.bias import compute_biases
    from retrieval.store import bf16

    monkeypatch.setattr(bf16, "mode_rounds", lambda: False)
    assert recorded_math(10 ** 6, "bf16") == "fp32"
    assert compute_biases(folder, bank="corpus", bank_size=256, ref_size=256, calibrate=0,
                          precision="bf16")["precision"] == "fp32"
    monkeypatch.setattr(bf16, "mode_rounds", lambda: True)
    assert recorded_math(10 ** 6, "bf16") == "bf16" and recorded_math(10 ** 6, "fp32") == "fp32"


def test_the_mode_probe_agrees_with_a_product():
    """``mode_rounds`` says whether a bf16-mode product differs from float32 beyond float32's own
    rounding: checked on a second shape (the probe is cached per process)."""
    import torch

    from retrieval.store.bf16 import matmul_math, mode_rounds

    a, b = torch.from_numpy(unit_vectors(300, 512, 7)), torch.from_numpy(unit_vectors(700, 512, 8)).T
    with torch.inference_mode():
        exact = a @ b
        with matmul_math(torch, "bf16"):
            err = float((a @ b - exact).abs().max())
    assert (err > 1e-4) == mode_rounds()


def test_appends_use_the_generations_math(folder, monkeypatch, bf16_everywhere):
    from retrieval.ops import add_embeddings, bias
    from retrieval.ops.bias import compute_biases

    seen = []
    real = bias.item_offsets
    monkeypatch.setattr(bias, "item_offsets", lambda *a, **kw: seen.append(kw["precision"]) or real(*a, **kw))
    for precision in ("fp32", "bf16"):
        compute_biases(folder, bank="corpus", bank_size=256, ref_size=256, calibrate=0, precision=precision)
        seen.clear()
        add_embeddings(folder, unit_vectors(3, D, 5), unit_vectors(3, D, 6), [{"key": f"new-{precision}{i}"}
                                                                              for i in range(3)])
        assert seen and set(seen) == {precision}


def test_environment_overrides_auto_and_bad_values_are_refused(folder, monkeypatch):
    from retrieval.methods.offsets import auto_precision, resolve_precision
    from retrieval.ops.bias import compute_biases

    for forced in ("fp32", "bf16"):
        monkeypatch.setenv("RETRIEVAL_OFFSETS_PRECISION", forced)
        assert auto_precision() == forced == resolve_precision("auto")
    monkeypatch.setenv("RETRIEVAL_OFFSETS_PRECISION", "fp32")
    assert compute_biases(folder, bank="corpus", bank_size=256, ref_size=256, calibrate=0)["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        compute_biases(folder, bank="corpus", precision="int8")


def test_cli_option_and_info(folder):
    from retrieval.cli import main

    r = CliRunner().invoke(main, ["bias", str(folder), "--bank", "corpus", "--bank-size", "256", "--ref-size", "256",
                                  "--calibrate-pairs", "0", "--offsets-precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert "fp32 math" in r.output
    assert json.loads((folder / "manifest.json").read_text())["bias"]["precision"] == "fp32"
    r = CliRunner().invoke(main, ["info", str(folder)])
    assert r.exit_code == 0 and "fp32 math" in r.output
    r = CliRunner().invoke(main, ["bias", str(folder), "--offsets-precision", "fp8"])
    assert r.exit_code == 2 and "fp8" in r.output
