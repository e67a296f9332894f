"""X-MoRe math against hand-computed values and the official running-sum rule."""
import math

import numpy as np
import pytest

from retrieval.methods.xmore import (StreamNormaliser, caption_probs, confidence, image_probs, mix, select_captions,
                             softmax, xmore)

# 3 classes, 2 images. Class embeddings = identity and τ = 1, so a caption "embedding" log(p) has softmax p.
P_IMG = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
CAP_P = np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], [[0.2, 0.3, 0.5], [0.3, 0.3, 0.4]]])


def test_per_caption_softmax_is_averaged():
    p_cap = caption_probs(np.log(CAP_P), np.eye(3), 1.0)
    np.testing.assert_allclose(p_cap, [[0.3, 0.525, 0.175], [0.25, 0.3, 0.45]], atol=1e-6)


def test_entropy_confidence_hand_values():
    # α1 = 1 - H(.7,.2,.1)/ln 3, H = .7 ln(1/.7) + .2 ln 5 + .1 ln 10 = 0.801819
    h = 0.7 * math.log(1 / 0.7) + 0.2 * math.log(5) + 0.1 * math.log(10)
    assert confidence(P_IMG)[0] == pytest.approx(1 - h / math.log(3))
    assert confidence(P_IMG)[0] == pytest.approx(0.2701533, abs=1e-6)
    assert confidence(np.array([[0.3, 0.525, 0.175]]))[0] == pytest.approx(0.0856657, abs=1e-6)
    assert confidence(np.full((1, 3), 1 / 3))[0] == pytest.approx(0.0, abs=1e-12)
    assert confidence(np.array([[1.0, 0.0, 0.0]]))[0] == pytest.approx(1.0)


def test_batch_mean_mix_hand_values():
    p_cap = caption_probs(np.log(CAP_P), np.eye(3), 1.0)
    pred = mix(P_IMG, p_cap, "xmore", "batch")
    a, b = np.array([0.2701533, 0.0164614]), np.array([0.0856657, 0.0286893])
    np.testing.assert_allclose(pred.w_img, a / a.mean(), rtol=1e-5)   # 1.88513, 0.11487
    np.testing.assert_allclose(pred.w_cap, b / b.mean(), rtol=1e-5)   # 1.49824, 0.50176
    np.testing.assert_allclose(pred.scores[0], [1.769065, 1.163603, 0.450706], rtol=1e-5)
    assert pred.labels.tolist() == [0, 2]  # image 2: captions (weight 0.50) outvote a flat image prediction
    # calibration means instead of the batch's
    cal = mix(P_IMG, p_cap, "xmore", "batch", means=(0.5, 0.25))
    np.testing.assert_allclose(cal.w_img, a / 0.5, rtol=1e-5)


def test_ablations():
    p_cap = caption_probs(np.log(CAP_P), np.eye(3), 1.0)
    assert mix(P_IMG, p_cap, "image").labels.tolist() == [0, 0]
    assert mix(P_IMG, p_cap, "caption").labels.tolist() == [1, 2]
    fixed = mix(P_IMG, p_cap, "fixed")
    np.testing.assert_allclose(fixed.scores, 0.5 * P_IMG + 0.5 * p_cap)
    with pytest.raises(ValueError, match="unknown method"):
        mix(P_IMG, p_cap, "vote")
    with pytest.raises(ValueError, match="unknown normalisation"):
        mix(P_IMG, p_cap, "xmore", "global")


def test_stream_reproduces_the_official_running_sum():
    """Official: stat = cat(stat, [α_t]); w_t = F.normalize(stat, p=1, dim=0)[-1]."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p_img = softmax(rng.standard_normal((12, 5)) * 2)
    p_cap = softmax(rng.standard_normal((12, 5)) * 2)
    img_stat, cap_stat, want = torch.zeros(0), torch.zeros(0), []
    for t in range(12):
        img_stat = torch.cat([img_stat, torch.tensor([confidence(p_img[t:t + 1])[0]], dtype=torch.float32)])
        cap_stat = torch.cat([cap_stat, torch.tensor([confidence(p_cap[t:t + 1])[0]], dtype=torch.float32)])
        wi = torch.nn.functional.normalize(img_stat, p=1.0, dim=0)[-1].item()
        wc = torch.nn.functional.normalize(cap_stat, p=1.0, dim=0)[-1].item()
        want.append((wi, wc, int(np.argmax(wi * p_img[t] + wc * p_cap[t]))))
    stream = StreamNormaliser()  # fed in 3 uneven chunks: same as one at a time
    got = [mix(p_img[s], p_cap[s], "xmore", "stream", stream=stream) for s in (slice(0, 5), slice(5, 6), slice(6, 12))]
    w_img = np.concatenate([g.w_img for g in got])
    w_cap = np.concatenate([g.w_cap for g in got])
    np.testing.assert_allclose(w_img, [w[0] for w in want], rtol=1e-5)
    np.testing.assert_allclose(w_cap, [w[1] for w in want], rtol=1e-5)
    assert np.concatenate([g.labels for g in got]).tolist() == [w[2] for w in want]
    assert stream.seen == 12


def test_select_captions_keeps_the_k_most_similar_to_the_image():
    img = np.array([[1.0, 0.0]], np.float32)
    caps = np.array([[[0.0, 1.0], [0.9, 0.1], [0.5, 0.5], [1.0, 0.0]]], np.float32)
    top, pos = select_captions(img, caps, 2)
    assert pos.tolist() == [[3, 1]]
    np.testing.assert_array_equal(top[0], caps[0, [3, 1]])
    with pytest.raises(ValueError, match="captions must be"):
        select_captions(img, caps[:, :, :1], 2)


def test_xmore_end_to_end_on_arrays():
    rng = np.random.default_rng(1)
    classes = np.eye(4, 8, dtype=np.float32)
    imgs = classes[[0, 1, 2, 3]] + 0.3 * rng.standard_normal((4, 8)).astype(np.float32)
    imgs /= np.linalg.norm(imgs, axis=1, keepdims=True)
    caps = np.repeat(classes[[0, 1, 2, 3]][:, None, :], 6, 1) + 0.1 * rng.standard_normal((4, 6, 8)).astype(np.float32)
    pred = xmore(imgs, caps, classes, tau=10.0, k=3)
    assert pred.labels.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(pred.p_img, image_probs(imgs, classes, 10.0))


def test_xmore_lifts_zero_shot_on_real_clip_geometry():
    """848 CIFAR-10 images embedded by open_clip ViT-B-32 (laion2b), leave-one-out neighbours whose
    'captions' are their class-name text embeddings: X-MoRe must beat zero-shot CLIP (0.703)."""
    from tests.conftest import SHARED

    path = SHARED / "data" / "embeddings" / "cifar10-vitb32-laion2b-trainshard012" / "cifar10_train_shard012_numeric.npz"
    if not path.exists():
        pytest.skip("real-CLIP CIFAR embeddings not present")
    d = np.load(path)
    x, t, y = d["vision_emb"], d["text_emb"], d["label_ids"]
    classes = np.stack([t[y == c][0] for c in range(10)])
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    caps = t[np.argsort(-s, 1)[:, :128]]
    acc = {m: float((xmore(x, caps, classes, 100.0, k=16, method=m).labels == y).mean()) for m in
           ("image", "caption", "fixed", "xmore")}
    assert acc["image"] == pytest.approx(0.703, abs=0.002)
    assert acc["xmore"] >= acc["image"] + 0.08       # measured 0.817
    stream = xmore(x, caps, classes, 100.0, k=16, normalise="stream")
    assert float((stream.labels == y).mean()) >= acc["image"] + 0.08
