"""Retrieval-augmented zero-shot classification over an index (X-MoRe, DESIGN §5).

``Classifier`` binds an opened index (with its model) to a list of classes: it encodes the class
prompts once, embeds query images, retrieves R image neighbours per image, reads their *stored*
caption embeddings and applies ``retrieval.xmore``. Images that fail to load are skipped and
reported with their reason, never fatal.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import IndexFolderError, ItemError
from ..methods.xmore import Prediction, StreamNormaliser, caption_probs, confidence, image_probs, mix, select_captions
from .inputs import check_classes, check_template, fill_template

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class Result:
    """One classified image."""

    path: str
    label: str
    score: float
    image_top: list[tuple[str, float]]
    caption_top: list[tuple[str, float]]
    w_img: float
    w_cap: float
    neighbours: list[int]

    def as_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "score": self.score,
                "image_top3": [{"label": c, "p": p} for c, p in self.image_top],
                "caption_top3": [{"label": c, "p": p} for c, p in self.caption_top],
                "w_img": self.w_img, "w_cap": self.w_cap, "neighbours": self.neighbours}


class Classifier:
    """X-MoRe over an opened index: ``Classifier(index, classes).classify(paths)``."""

    def __init__(self, index, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                 neighbours: int = 128, captions: int = 16, tau: Optional[float] = None):
        if index.clip is None:
            raise IndexFolderError("classification needs the index's model; open the index with clip=")
        if neighbours <= 0 or captions <= 0:
            raise ValueError(f"neighbours and captions must be positive, got {neighbours} and {captions}")
        if not templates:
            raise ValueError("give at least one template")
        templates = [check_template(t) for t in templates]
        self.index, self.classes = index, check_classes(classes)
        self.templates, self.neighbours, self.captions = list(templates), neighbours, captions
        self.tau = float(tau if tau is not None else index.clip.logit_scale)
        self.class_emb = self._class_embeddings()

    def _class_embeddings(self) -> np.ndarray:
        """Per class: the mean of its template embeddings, re-normalised [C, d]."""
        from ..embed import Encoder

        texts = [fill_template(t, c) for c in self.classes for t in self.templates]
        emb = Encoder(self.index.clip).texts(texts).reshape(len(self.classes), len(self.templates), -1).mean(1)
        return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    def neighbour_captions(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored caption embeddings of each image's R image neighbours: ([n, R, d], ids [n, R])."""
        _, ids = self.index.search(images, self.neighbours, target="image", captioned=True)  # only rows with captions
        ids = ids[:, :int((ids >= 0).sum(1).min())]
        caps = self.index.embeddings(ids, "text")
        if not np.any(np.linalg.norm(caps, axis=-1) > 0.5):
            raise IndexFolderError(f"{self.index.folder} has no caption embeddings; X-MoRe needs a captioned index")
        return caps, ids

    def image_probs(self, images: np.ndarray) -> np.ndarray:
        """p_img [n, C]: CLIP's zero-shot class distribution of image embeddings [n, d]."""
        return image_probs(images, self.class_emb, self.tau)

    def caption_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_cap [n, C], neighbour ids whose captions were used [n, K]) for image embeddings [n, d]."""
        caps, ids = self.neighbour_captions(images)
        top, pos = select_captions(images, caps, self.captions)
        return caption_probs(top, self.class_emb, self.tau), np.take_along_axis(ids, pos, 1)

    def predict(self, images: np.ndarray, method: str = "xmore", normalise: str = "batch",
                means: Optional[tuple[float, float]] = None, stream: Optional[StreamNormaliser] = None
                ) -> tuple[Prediction, np.ndarray]:
        """X-MoRe on image embeddings [n, d]: (prediction, neighbour ids used [n, K])."""
        images = np.atleast_2d(np.asarray(images, np.float32))
        p_img = self.image_probs(images)
        if method == "image":
            return mix(p_img, p_img, "image"), np.zeros((len(images), 0), np.int64)
        p_cap, used = self.caption_probs(images)
        return mix(p_img, p_cap, method, normalise, means, stream), used

    def calibration_means(self, paths: Sequence[str | os.PathLike], batch_size: int = 64,
                          errors: Optional[list] = None) -> tuple[float, float]:
        """Mean image and caption confidences (α, β) over a calibration set, for ``means=``."""
        embs = [e for _, e in self.embed_paths(paths, batch_size, errors=errors)]
        if not embs:
            raise ValueError("no calibration image could be read")
        x = np.concatenate(embs)
        return float(confidence(self.image_probs(x)).mean()), float(confidence(self.caption_probs(x)[0]).mean())

    def embed_paths(self, paths: Sequence[str | os.PathLike], batch_size: int = 64, progress: bool = False,
                    errors: Optional[list] = None) -> Iterator[tuple[list[str], np.ndarray]]:
        """(paths that loaded, embeddings) per batch; failures appended to ``errors`` as (path, reason)."""
        import torch

        from ..embed import Encoder
        from ..corpus.images import decode_image

        clip, enc = self.index.clip, Encoder(self.index.clip)

        def load(p):
            try:
                return clip.preprocess(decode_image(str(p))[0]), None
            except ItemError as e:
                return None, e.reason
            except Exception as e:  # preprocessing of a decodable but odd image
                return None, f"{type(e).__name__}: {e}"

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), unit="img", desc="classify")
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i in range(0, len(paths), batch_size):
                chunk = [str(p) for p in paths[i:i + batch_size]]
                ok, tensors = [], []
                for p, (t, why) in zip(chunk, pool.map(load, chunk)):
                    if t is None:
                        if errors is not None:
                            errors.append((p, why))
                    else:
                        ok.append(p)
                        tensors.append(t)
                if bar is not None:
                    bar.update(len(chunk))
                if ok:
                    yield ok, enc.images(torch.stack(tensors))
        if bar is not None:
            bar.close()

    def classify(self, paths: Sequence[str | os.PathLike], method: str = "xmore", normalise: str = "batch",
                 batch_size: int = 64, progress: bool = False, errors: Optional[list] = None,
                 means: Optional[tuple[float, float]] = None) -> list[Result]:
        """Classify image files; unreadable ones go to ``errors`` (path, reason) and are skipped.

        With normalise='batch' the confidences are divided by their means over *all* given images
        (or by ``means``), so results do not depend on ``batch_size``; 'stream' is the official
        running rule, in the given order.
        """
        got_paths, embs = [], []
        for ps, e in self.embed_paths(paths, batch_size, progress, errors):
            got_paths += ps
            embs.append(e)
        if not embs:
            return []
        pred, nbr = self.predict(np.concatenate(embs), method, normalise, means, StreamNormaliser())
        return self.results(got_paths, pred, nbr, with_captions=method != "image")

    def results(self, paths: list[str], pred: Prediction, nbr: np.ndarray, with_captions: bool = True) -> list[Result]:
        def top3(p):
            o = np.argsort(-p)[:3]
            return [(self.classes[j], round(float(p[j]), 4)) for j in o]

        return [Result(p, self.classes[int(pred.labels[i])], float(pred.scores[i].max()), top3(pred.p_img[i]),
                       top3(pred.p_cap[i]) if with_captions else [], round(float(pred.w_img[i]), 4), round(float(pred.w_cap[i]), 4),
                       [int(x) for x in nbr[i]])
                for i, p in enumerate(paths)]
