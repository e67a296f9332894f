"""BSAP-H on real CLIP geometry (OpenAI ViT-B/32 ImageNet features, DESIGN §4): the log-space
interpolation keeps BSAP's gain where BSAP helps and CLIP's accuracy where BSAP hurts."""
import numpy as np
import pytest

from retrieval.methods.rerank import DEFAULT_NNN_K, LAM_BY_TARGET, bsap_offsets, nnn_bias
from tests.conftest import SHARED

IMAGENET = SHARED / "data" / "embeddings" / "imagenet-vitb32-fewshot-zeroshot"


def imagenet_directions(seed: int = 0, tau: float = 100.0) -> dict:
    """P@1 of clip / bsap / hybrid / nnn, text->image and image->text (captions = class prompts),
    exact over the whole corpus, banks sampled from the corpus as `retrieval bias --bank corpus` does."""
    X = np.load(IMAGENET / "image_feats_4shot_vitb32.npy").astype(np.float32)
    y = np.load(IMAGENET / "labels_4shot.npy")
    T = np.load(IMAGENET / "zeroshot_classifier_vitb32.npy").astype(np.float32)
    C = T[y]  # each image's caption: its class's prompt-ensemble embedding
    rng = np.random.default_rng(seed)
    out = {}
    for name, Q, qlab, items, ilab, bank_from, lam in (("t2i", T, np.arange(1000), X, y, C, LAM_BY_TARGET["image"]),
                                                       ("i2t", X, y, C, y, X, LAM_BY_TARGET["text"])):
        bank = bank_from[rng.choice(len(bank_from), min(4096, len(bank_from)), replace=False)]  # the default size
        refs = bank_from[rng.choice(len(bank_from), 4000, replace=False)]
        c, nb = bsap_offsets(items, bank, tau), nnn_bias(items, refs, DEFAULT_NNN_K)
        s = Q @ items.T
        for method, score in (("clip", s), ("bsap", s - c), ("hybrid", s - (1 - lam) * c),
                              ("nnn", s - 0.75 * nb)):
            out[name, method] = float((ilab[score.argmax(1)] == qlab).mean())
    return out


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="real ImageNet CLIP features not present")
def test_hybrid_keeps_the_better_of_clip_and_bsap_in_both_directions():
    """The issue's target: hybrid >= max(clip, bsap) - 0.5 point in both directions, and strictly
    above clip where BSAP is above clip."""
    r = imagenet_directions()
    assert r["t2i", "bsap"] > r["t2i", "clip"] + 0.10       # the 4,096-row bank: 0.851 vs 0.714
    assert r["i2t", "bsap"] < r["i2t", "clip"] - 0.015      # BSAP alone still hurts zero-shot: 0.633 vs 0.655
    for d in ("t2i", "i2t"):
        assert r[d, "hybrid"] >= max(r[d, "clip"], r[d, "bsap"]) - 0.005, (d, r)   # 0.862 and 0.652
    assert r["t2i", "hybrid"] > r["t2i", "clip"]


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="real ImageNet CLIP features not present")
def test_nnn_default_k_helps_in_both_directions():
    r = imagenet_directions()
    assert r["t2i", "nnn"] >= r["t2i", "clip"] + 0.10    # k = 16: 0.845 vs 0.714 (k = 128: 0.812)
    assert r["i2t", "nnn"] >= r["i2t", "clip"] + 0.01    # 0.675 vs 0.655 (k = 128: 0.652, a loss)


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="real ImageNet CLIP features not present")
def test_half_the_logit_scale_as_bank_temperature_makes_bsap_safe_in_both_directions():
    """The default bank temperature (BANK_TAU_SCALE = 0.5: τ = 50 for OpenAI CLIP): BSAP no longer
    loses zero-shot accuracy (0.658 vs 0.655; at τ = 100 0.633) and keeps most of its text->image gain
    (0.843 vs 0.851)."""
    from retrieval.ops.bias import BANK_TAU_SCALE

    r = imagenet_directions(tau=BANK_TAU_SCALE * 100.0)
    assert r["i2t", "bsap"] >= r["i2t", "clip"] - 0.001
    assert r["t2i", "bsap"] >= r["t2i", "clip"] + 0.10
