"""Few-shot classification from a support set: GDA (``methods.gda``) over the index's model.

``classify --support labels.csv``: the support images are embedded with the index's model, the
class prompts give the zero-shot classifier, and :func:`~retrieval.methods.gda.gda_classifier`
(α and κ by cross-validation on the support) classifies the query images.

``classify --support-from-index M`` (name-only, SuS-X style): no labelled image at all. Each class
prompt retrieves its top M images from the index (exact NNN over the whole corpus when the index has
bias offsets), an image retrieved for several classes goes to the class whose prompt is closest, and
these pseudo-labelled images are GDA's support. GDA rather than a Tip-Adapter cache: on real CLIP
features it lifted CIFAR-10 from 0.703 to 0.94 where the cache reached 0.84-0.88 (docs/quality.md).
α and κ are fixed (``RETRIEVED_ALPHA``, ``RETRIEVED_KAPPA``), not cross-validated: the retrieved
images are those the prompts already rank first, so zero-shot is nearly always right on them and
cross-validation on them picks too small an α (0.85 instead of 0.94 on CIFAR-10).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..methods.gda import GDAClassifier, gda_classifier
from ..methods.xmore import softmax


@dataclass
class FewShotResult:
    path: str
    label: str
    top: list = field(default_factory=list)   # [(class, probability)] best three

    def as_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "top3": [{"label": c, "p": p} for c, p in self.top]}


def fit_support(clf, paths: Sequence[str | os.PathLike], labels: Sequence[str], batch_size: int = 64,
                errors: Optional[list] = None) -> GDAClassifier:
    """The GDA classifier of ``clf``'s classes and model from labelled support images (unreadable
    ones appended to ``errors`` and left out)."""
    index_of = {c: i for i, c in enumerate(clf.classes)}
    unknown = sorted({lab for lab in labels if lab not in index_of})
    if unknown:
        raise ValueError(f"support labels not among the classes: {', '.join(unknown[:5])}")
    label_of = {str(p): lab for p, lab in zip(paths, labels)}
    xs, ys = [], []
    for ok, emb in clf.embed_paths(list(paths), batch_size, errors=errors):
        xs.append(emb)
        ys.extend(index_of[label_of[p]] for p in ok)
    if len(ys) < 2:
        raise ValueError("the support set needs at least 2 readable images")
    return gda_classifier(np.concatenate(xs), np.asarray(ys, np.int64), clf.class_emb, logit_scale=clf.tau)


RETRIEVED_ALPHA, RETRIEVED_KAPPA = 0.05, 4.0   # × τ / 100; measured on real CLIP features (docs/quality.md)


@dataclass
class RetrievedSupport:
    emb: np.ndarray       # [n, d] stored image embeddings
    labels: np.ndarray    # [n] pseudo-labels (class ids)
    ids: np.ndarray       # [n] global ids in the index
    rerank: str           # how the class prompts searched


def retrieved_support(index, class_emb: np.ndarray, m: int, rerank: Optional[str] = None) -> RetrievedSupport:
    """The top ``m`` images of each class prompt ``class_emb`` [C, d] in ``index`` as a
    pseudo-labelled support set; ``rerank`` None: 'nnn' when the index has bias offsets, else 'clip'."""
    if m <= 0:
        raise ValueError(f"images per class must be positive, got {m}")
    rerank = rerank or ("nnn" if index.biases.available else "clip")
    scores, ids = index.search(np.asarray(class_emb, np.float32), m, target="image", rerank=rerank)
    flat, score = ids.ravel(), scores.ravel()
    label = np.repeat(np.arange(len(class_emb)), ids.shape[1])
    keep = flat >= 0
    flat, score, label = flat[keep], score[keep], label[keep]
    # an image found by several prompts: the class that scored it highest (its offset is the same for
    # every prompt, so this is the closest prompt)
    order = np.lexsort((-score, flat))
    first = np.ones(len(order), bool)
    first[1:] = flat[order][1:] != flat[order][:-1]
    pick = order[first]
    if len(pick) < 2:
        raise ValueError(f"the index returned {len(pick)} images for the class prompts; GDA needs at least 2")
    return RetrievedSupport(index.embeddings(flat[pick], "image"), label[pick], flat[pick], rerank)


def fit_retrieved(clf, m: int, rerank: Optional[str] = None) -> tuple[GDAClassifier, RetrievedSupport]:
    """The GDA classifier of ``clf``'s classes from the images its class prompts retrieve from its index."""
    sup = retrieved_support(clf.index, clf.class_emb, m, rerank)
    unit = clf.tau / 100.0
    gda = gda_classifier(sup.emb, sup.labels, clf.class_emb, logit_scale=clf.tau, alpha=RETRIEVED_ALPHA * unit,
                         kappa=RETRIEVED_KAPPA)
    return gda, sup


def classify_fewshot(clf, gda: GDAClassifier, paths: Sequence[str | os.PathLike], batch_size: int = 64,
                     progress: bool = False, errors: Optional[list] = None) -> list[FewShotResult]:
    """Classify ``paths`` with the fitted GDA classifier; probabilities are the softmax of its logits."""
    out = []
    for ok, emb in clf.embed_paths(list(paths), batch_size, progress, errors):
        for path, row in zip(ok, softmax(gda.logits(emb))):
            best = np.argsort(-row)[:3]
            out.append(FewShotResult(path, clf.classes[best[0]], [(clf.classes[i], round(float(row[i]), 4)) for i in best]))
    return out
