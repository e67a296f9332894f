"""GDA: training-free few-shot adaptation of a zero-shot CLIP classifier (ICLR 2024, "A hard-to-beat
baseline for training-free CLIP-based adaptation", official code mrflogs/ICLR24; DESIGN §6).

From L2-normalised support features x_i with labels y_i: class means μ_c, the pooled scatter
S = Σ (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ, and the official estimator's precision
Λ = d · (S + tr(S / (N − 1)) · I)⁺. Linear discriminant: w_c = Λ μ_c, b_c = log(1/C) − ½ μ_cᵀ Λ μ_c.
Logits = τ x·t_c + α (x·w_c + b_c), with t_c the class text embeddings (the zero-shot classifier).

Two changes to the paper, both measured on real CLIP features (docs/quality.md):
- **α without a validation split**: the paper picks α on a validation set. Here α (and κ below) is
  chosen by leave-one-shot-out cross-validation on the support set itself, then scaled by the
  ratio of shots per class in the full support to those in a fold's training part (a discriminant
  fitted on more shots deserves proportionally more weight).
- **A text prior on the class means** (``kappa``): with few shots μ_c is noisy; it is shrunk toward
  the class's text embedding carried into image space (centred, scaled by the least-squares fit of
  the centred text embeddings to the centred class means, shifted to the mean class mean):
  μ_c ← (n_c μ_c + κ p_c) / (n_c + κ). κ = 0 is the paper's estimator.
Numpy in, numpy out; no model or index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

ALPHAS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)  # × τ / 100
KAPPAS = (0.0, 1.0, 2.0, 4.0)
DEFAULT_ALPHA, DEFAULT_KAPPA = 0.05, 1.0  # × τ / 100; used when the support cannot be split (1 shot)


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if (n == 0).any():
        raise ValueError(f"{name} has an all-zero row")
    return x / n


def text_prior(support: np.ndarray, labels: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """The class text embeddings carried into image space [C, d]: a (t_c − mean t) + mean μ, the
    means over the classes that have support, a fitted by least squares between the centred text
    embeddings and the centred class means."""
    C = len(class_text)
    mus, have = _means(support, labels, C)
    tc = class_text - class_text[have].mean(0)   # both centred over the classes that have support
    centre = mus[have].mean(0)
    mc = mus[have] - centre
    a = float((tc[have] * mc).sum() / max((tc[have] * tc[have]).sum(), 1e-12))
    return a * tc + centre


def _means(x: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(y, minlength=C).astype(np.float64)
    sums = np.zeros((C, x.shape[1]))
    np.add.at(sums, y, x)
    have = counts > 0
    sums[have] /= counts[have, None]
    return sums, have


def fit_gda(support: np.ndarray, labels: np.ndarray, n_classes: int, prior: Optional[np.ndarray] = None,
            kappa: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(W [C, d], b [C]) of the shared-covariance discriminant, the official estimator; ``prior``
    [C, d] with weight ``kappa`` shrinks the class means (a class without support takes its prior
    as its mean)."""
    mus, have, precision = _estimate(support, labels, n_classes)
    return _discriminant(mus, have, precision, np.asarray(labels), prior, kappa)


def _estimate(support: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class means, which classes have support, the precision Λ)."""
    x, y = np.asarray(support, np.float64), np.asarray(labels)
    n, d = x.shape
    if n < 2:
        raise ValueError("GDA needs at least 2 support samples")
    mus, have = _means(x, y, n_classes)
    centred = x - mus[y]
    S = centred.T @ centred
    return mus, have, d * np.linalg.pinv(S + np.trace(S) / (n - 1) * np.eye(d), hermitian=True)


def _discriminant(mus: np.ndarray, have: np.ndarray, precision: np.ndarray, y: np.ndarray,
                  prior: Optional[np.ndarray], kappa: float) -> tuple[np.ndarray, np.ndarray]:
    C = len(mus)
    mus = mus.copy()
    if not have.all():
        if prior is None:
            raise ValueError(f"{int((~have).sum())} classes have no support samples and no prior mean")
        mus[~have] = prior[~have]  # a class without support: its text prior is its mean
    if prior is not None and kappa > 0:
        counts = np.bincount(y, minlength=C)[:, None].astype(np.float64)
        mus = (counts * mus + kappa * prior) / (counts + kappa)
    W = mus @ precision
    b = np.log(1.0 / C) - 0.5 * np.einsum("cd,cd->c", W, mus)
    return W, b


@dataclass
class GDAClassifier:
    """Zero-shot logits plus α times the GDA discriminant; ``alpha``/``kappa`` as chosen."""

    class_text: np.ndarray   # [C, d], L2-normalised
    W: np.ndarray
    b: np.ndarray
    logit_scale: float
    alpha: float
    kappa: float
    cv_accuracy: Optional[float] = None

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """[n, C] logits of L2-normalised embeddings ``emb`` [n, d]."""
        x = _unit(emb, "embeddings")
        if x.shape[1] != self.class_text.shape[1]:
            raise ValueError(f"embeddings have dim {x.shape[1]}, the classifier {self.class_text.shape[1]}")
        g = x @ self.W.T + self.b
        return (self.logit_scale * x @ self.class_text.T + self.alpha * g).astype(np.float32)

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """Class ids [n]."""
        return self.logits(emb).argmax(axis=1)


def _shot_index(y: np.ndarray) -> np.ndarray:
    """Each sample's rank among its class's samples (0, 1, ... in order of appearance)."""
    out = np.empty(len(y), np.int64)
    seen: dict = {}
    for i, c in enumerate(y.tolist()):
        out[i] = seen.get(c, 0)
        seen[c] = out[i] + 1
    return out


def choose_alpha_kappa(x: np.ndarray, y: np.ndarray, T: np.ndarray, tau: float,
                       alphas: Sequence[float], kappas: Sequence[float]) -> tuple[float, float, Optional[float]]:
    """(α, κ, CV accuracy) by leave-one-shot-out on the support: fold h holds out the h-th shot of
    every class that has more than one; α scaled by shots(full) / shots(fold's training part)."""
    shot = _shot_index(y)
    counts = np.bincount(y, minlength=len(T))
    folds = [h for h in range(int(counts.max())) if ((shot == h) & (counts[y] > 1)).any()]
    unit = (tau or 100.0) / 100  # the α grid is in units of τ / 100 (any unit when τ = 0: argmax only)
    if not folds or counts[counts > 0].min() < 2:
        return DEFAULT_ALPHA * unit, DEFAULT_KAPPA, None
    hits = np.zeros((len(kappas), len(alphas)))
    tested = 0
    train_shots = []
    for h in folds[:5]:
        te = (shot == h) & (counts[y] > 1)
        tr = ~te
        train_shots.append(tr.sum() / max(len(np.unique(y[tr])), 1))
        zs = tau * x[te] @ T.T
        prior = text_prior(x[tr], y[tr], T)
        mus, have, precision = _estimate(x[tr], y[tr], len(T))
        for i, kappa in enumerate(kappas):
            W, b = _discriminant(mus, have, precision, y[tr], prior, kappa)
            g = x[te] @ W.T + b
            for j, a in enumerate(alphas):
                hits[i, j] += ((zs + a * unit * g).argmax(1) == y[te]).sum()
        tested += te.sum()
    i, j = np.unravel_index(np.argmax(hits), hits.shape)  # ties: the smaller κ and α
    full_shots = len(y) / len(np.unique(y))
    scale = full_shots / float(np.mean(train_shots))
    return alphas[j] * unit * scale, kappas[i], float(hits[i, j] / tested)


def gda_classifier(support_emb: np.ndarray, support_labels: np.ndarray, class_text_emb: np.ndarray,
                   logit_scale: float = 100.0, alpha: Optional[float] = None,
                   kappa: Optional[float] = None) -> GDAClassifier:
    """A GDA classifier from labelled support embeddings and the zero-shot class text embeddings.

    ``alpha`` None: chosen by cross-validation on the support (with ``kappa``, the text prior's
    weight, when that is None too); ``kappa=0`` is the paper's estimator.
    """
    x = _unit(support_emb, "support embeddings")
    T = _unit(class_text_emb, "class text embeddings")
    y = np.asarray(support_labels)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"support labels must be {len(x)} integers, got shape {y.shape} {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= len(T)):
        raise ValueError(f"support labels must be in [0, {len(T)}), the rows of the class text embeddings")
    if x.shape[1] != T.shape[1]:
        raise ValueError(f"support has dim {x.shape[1]}, class text embeddings {T.shape[1]}")
    if not (np.isfinite(logit_scale) and logit_scale >= 0):
        raise ValueError(f"logit_scale must be a finite number >= 0, got {logit_scale}")
    cv = None
    if alpha is None:
        kappas = KAPPAS if kappa is None else (float(kappa),)
        alpha, kappa, cv = choose_alpha_kappa(x, y, T, float(logit_scale), ALPHAS, kappas)
    kappa = DEFAULT_KAPPA if kappa is None else float(kappa)
    W, b = fit_gda(x, y, len(T), text_prior(x, y, T), kappa)
    return GDAClassifier(T, W, b, float(logit_scale), float(alpha), kappa, cv)
