"""Few-shot classification from a labelled support set: GDA (``methods.gda``) over the index's model.

``classify --support labels.csv``: the support images are embedded with the index's model, the
class prompts give the zero-shot classifier, and :func:`~retrieval.methods.gda.gda_classifier`
(α and κ by cross-validation on the support) classifies the query images.
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


def classify_fewshot(clf, gda: GDAClassifier, paths: Sequence[str | os.PathLike], batch_size: int = 64,
                     progress: bool = False, errors: Optional[list] = None) -> list[FewShotResult]:
    """Classify ``paths`` with the fitted GDA classifier; probabilities are the softmax of its logits."""
    out = []
    for ok, emb in clf.embed_paths(list(paths), batch_size, progress, errors):
        for path, row in zip(ok, softmax(gda.logits(emb))):
            best = np.argsort(-row)[:3]
            out.append(FewShotResult(path, clf.classes[best[0]], [(clf.classes[i], round(float(row[i]), 4)) for i in best]))
    return out
