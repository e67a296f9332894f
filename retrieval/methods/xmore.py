"""X-MoRe core math (DESIGN §5; arXiv 2308.15273, official ``ensemble_with_entropy.py``), numpy only.

Given L2-normalised image embeddings f(x) [n, d], class prompt embeddings t [C, d] and, per image,
the stored caption embeddings of its retrieved neighbours [n, R, d]:

1. p_img = softmax_c(τ f(x)·t_c)
2. keep the K captions most similar to f(x); p_cap = mean_k softmax_c(τ g_k·t_c)
3. confidences α = 1 - H(p_img)/log C, β = 1 - H(p_cap)/log C
4. weights: α, β divided by their means over the batch or a calibration set (stateless, our
   choice), or by their running sums over the stream (the official, order-dependent rule)
5. ŷ = argmax_c (w_img p_img + w_cap p_cap)

Ablations (``METHODS``): 'image' (zero-shot CLIP), 'caption' (captions only), 'fixed' (0.5/0.5),
'xmore' (entropy weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

METHODS = ("image", "caption", "fixed", "xmore")
NORMALISATIONS = ("batch", "stream")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def image_probs(images: np.ndarray, classes: np.ndarray, tau: float) -> np.ndarray:
    """p_img [n, C] = softmax(τ f(x)·t)."""
    images, classes = _check2(images, "images"), _check2(classes, "classes")
    if images.shape[1] != classes.shape[1]:
        raise ValueError(f"images have dim {images.shape[1]}, classes {classes.shape[1]}")
    return softmax(tau * images @ classes.T)


def select_captions(images: np.ndarray, captions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` captions per image most similar to it: (embeddings [n, k, d], positions [n, k])."""
    images = _check2(images, "images")
    captions = np.asarray(captions, np.float32)
    if captions.ndim != 3 or captions.shape[0] != len(images) or captions.shape[2] != images.shape[1]:
        raise ValueError(f"captions must be [n={len(images)}, R, d={images.shape[1]}], got {captions.shape}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    sims = np.einsum("nd,nrd->nr", images, captions)
    pos = np.argsort(-sims, axis=1, kind="stable")[:, :min(k, captions.shape[1])]
    return np.take_along_axis(captions, pos[:, :, None], 1), pos


def caption_probs(captions: np.ndarray, classes: np.ndarray, tau: float) -> np.ndarray:
    """p_cap [n, C]: the mean over each image's captions [n, K, d] of softmax(τ g·t)."""
    captions = np.asarray(captions, np.float32)
    if captions.ndim != 3:
        raise ValueError(f"captions must be [n, K, d], got {captions.shape}")
    return softmax(tau * captions @ _check2(classes, "classes").T).mean(axis=1)


def confidence(p: np.ndarray) -> np.ndarray:
    """1 - H(p)/log C per row: 0 for a uniform distribution, 1 for a one-hot one."""
    p = np.asarray(p, np.float64)
    c = p.shape[-1]
    if c < 2:
        raise ValueError("need at least 2 classes")
    h = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=-1)
    return 1.0 - h / np.log(c)


@dataclass
class StreamNormaliser:
    """The official running rule: w_t = α_t / Σ_{s≤t} α_s (L1 over the stream so far), per modality."""

    sum_img: float = 0.0
    sum_cap: float = 0.0
    seen: int = field(default=0)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w_img, w_cap = np.empty(len(a)), np.empty(len(b))
        for i, (ai, bi) in enumerate(zip(np.asarray(a, np.float64), np.asarray(b, np.float64))):
            self.sum_img += abs(ai)
            self.sum_cap += abs(bi)
            self.seen += 1
            w_img[i] = ai / self.sum_img if self.sum_img > 0 else 0.0
            w_cap[i] = bi / self.sum_cap if self.sum_cap > 0 else 0.0
        return w_img, w_cap


def mean_normalise(a: np.ndarray, b: np.ndarray, means: Optional[tuple[float, float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Stateless weights: α / mean(α), β / mean(β) (means of the batch, or the calibration ``means``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ma, mb = means if means is not None else (a.mean(), b.mean())
    return a / max(ma, 1e-12), b / max(mb, 1e-12)


@dataclass
class Prediction:
    """X-MoRe output for a batch: final probabilities-like scores and everything that produced them."""

    scores: np.ndarray    # [n, C] w_img p_img + w_cap p_cap (or one modality for the ablations)
    p_img: np.ndarray     # [n, C]
    p_cap: np.ndarray     # [n, C]
    alpha: np.ndarray     # [n] image confidence
    beta: np.ndarray      # [n] caption confidence
    w_img: np.ndarray     # [n]
    w_cap: np.ndarray     # [n]

    @property
    def labels(self) -> np.ndarray:
        return self.scores.argmax(axis=1)


def mix(p_img: np.ndarray, p_cap: np.ndarray, method: str = "xmore", normalise: str = "batch",
        means: Optional[tuple[float, float]] = None, stream: Optional[StreamNormaliser] = None) -> Prediction:
    """Combine the two modalities' distributions [n, C] by ``method`` (see ``METHODS``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalise!r}; choose one of {', '.join(NORMALISATIONS)}")
    p_img, p_cap = np.asarray(p_img, np.float64), np.asarray(p_cap, np.float64)
    if p_img.shape != p_cap.shape or p_img.ndim != 2:
        raise ValueError(f"p_img and p_cap must both be [n, C], got {p_img.shape} and {p_cap.shape}")
    a, b = confidence(p_img), confidence(p_cap)
    if method == "image":
        w_img, w_cap = np.ones(len(a)), np.zeros(len(a))
    elif method == "caption":
        w_img, w_cap = np.zeros(len(a)), np.ones(len(a))
    elif method == "fixed":
        w_img, w_cap = np.full(len(a), 0.5), np.full(len(a), 0.5)
    elif normalise == "stream":
        w_img, w_cap = (stream if stream is not None else StreamNormaliser())(a, b)
    else:
        w_img, w_cap = mean_normalise(a, b, means)
    scores = w_img[:, None] * p_img + w_cap[:, None] * p_cap
    return Prediction(scores, p_img, p_cap, a, b, w_img, w_cap)


def xmore(images: np.ndarray, neighbour_captions: np.ndarray, classes: np.ndarray, tau: float, k: int = 16,
          method: str = "xmore", normalise: str = "batch", means: Optional[tuple[float, float]] = None,
          stream: Optional[StreamNormaliser] = None) -> Prediction:
    """The whole X-MoRe prediction from arrays (steps 1-5 above)."""
    p_img = image_probs(images, classes, tau)
    top, _ = select_captions(images, neighbour_captions, k)
    return mix(p_img, caption_probs(top, classes, tau), method, normalise, means, stream)


def _check2(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    return x
