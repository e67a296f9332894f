"""The coarse quantizer's centroids: spherical k-means, its assignment GEMM in bf16 where the CPU
multiplies bf16 natively (``store.bf16``), else faiss's own k-means.

An IVF index over inner products trains its coarse quantizer by spherical k-means (faiss: 10
iterations, centroids normalised after each). Nearly all of that time is the assignment, one
[n, d] x [d, k] product per iteration: the build's largest single cost (about 3/4 of bare faiss's
train + add at 200k x 512, IVF1024). On CPUs with AVX512-BF16 or AMX, torch multiplies bf16 at 2-4x
its float32 speed, so the bf16 path runs faiss's own k-means loop (``faiss.contrib.clustering.kmeans``:
same initialisation from a seeded random sample, same empty-cluster splitting) with an assignment
that multiplies bf16 rows: the items as they are, the centroids minus the items' mean ``m``. The
best centroid of x is the same (x·c = x·(c - m) + x·m, and x·m is the row's constant), and the
products stay small, so bf16's rounding of the output (8 bits of mantissa) is finer where it decides
(CLIP rows share a mean direction of norm ~0.7-0.8: raw products all sit near 0.8, where bf16's
steps are 0.004); each row's previous best score r, a row constant, is subtracted inside the
product ([x, -r]·[c - m, 1]), which brings the deciding products near zero, where the steps are
finest. Rounded scores still tie; an argmax gives a tie to the lowest column, and over the
iterations that bias grows the low-numbered lists (list-size imbalance 2.5 against faiss's 1.9 on
clustered data with neither remedy), so the centroids' columns are also shuffled afresh (seeded)
for every iteration: ties then fall at random. Sums and centroids stay float32.
Only the training's assignment changes: rows are added to the lists by faiss in float32, so every
row still lands in its nearest list.

Measured (``scripts/bench_kmeans.py``, docs/benchmarks.md "Write path"; an AMD EPYC with AVX512-BF16,
no AMX): 102,400 rows into 1,024 lists, 1.8x faster than faiss's k-means, the same objective to 5
digits on clustered and CLIP-like data, recall@10 at every nprobe within the seeds' spread, ~5 %
longer lists scanned at equal nprobe (faiss's own C++ loop splits clusters slightly better than its
contrib loop: the float32 contrib loop shows the same); on the real ImageNet CLIP embeddings
(4,000 rows, 64 lists, forced) the objective within the seeds' spread. Whole 200k builds (two each,
ABBA): 1.12x faster, serving QPS and recall unchanged within noise.
"""
from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from . import bf16

log = logging.getLogger("retrieval.build")

ENV = "RETRIEVAL_KMEANS_PRECISION"
NITER = 10        # faiss's IVF default (Level1Quantizer's ClusteringParameters.niter)
SEED = 1234       # faiss's ClusteringParameters.seed
BLOCK = 4096      # rows per assignment product: [4096, k] bf16 scores
MAX_PER_LIST = 256  # faiss's max_points_per_centroid: larger samples are subsampled (seeded), as faiss does
# Smaller k-means (sample rows x lists) train with faiss in float32 whatever is asked: the product is
# too small for bf16's per-iteration costs (the bf16 max, the float32 sums) to pay, and faiss's own
# checks (at least k rows) apply as before. Measured at 100 rows per list, d = 512 (fp32 vs bf16):
# 25,600 x 256 0.39 vs 0.66 s, 51,200 x 512 1.80 vs 1.67 s, 102,400 x 1,024 6.4 vs 4.2 s
BF16_MIN_WORK = 50_000_000


def kmeans_math(n: int, nlist: int, precision: str = "auto") -> str:
    """The math the coarse k-means of ``n`` rows into ``nlist`` lists runs in: "bf16" or "fp32" ("auto"
    reads the CPU's flags and RETRIEVAL_KMEANS_PRECISION)."""
    precision = bf16.resolve_precision(precision, ENV)
    return "fp32" if n < nlist or n * nlist < BF16_MIN_WORK else precision


def coarse_centroids(sample: np.ndarray, nlist: int, precision: str = "auto", seed: int = SEED) -> np.ndarray:
    """Unit centroids [nlist, d] float32 of a spherical k-means of ``sample`` [n, d] by inner product:
    faiss's ``IVF{nlist},Flat`` training in float32, or the same loop with bf16 assignment (above)."""
    import faiss

    x = np.ascontiguousarray(sample, np.float32)
    math = kmeans_math(len(x), nlist, precision)
    if math == "fp32":
        coarse = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(coarse).cp.seed = seed
        coarse.train(x)
        return faiss.downcast_index(coarse).quantizer.reconstruct_n(0, nlist)
    if len(x) > MAX_PER_LIST * nlist:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), MAX_PER_LIST * nlist, replace=False))]
    # the module prints at import and the loop always prints a line: neither belongs on our stdout
    # (sys.stdout is swapped for the call: another thread's print() meanwhile is dropped too; logging
    # handlers keep their own stream)
    with contextlib.redirect_stdout(io.StringIO()):
        from faiss.contrib.clustering import kmeans
        cent = kmeans(nlist, _BF16Assign(x, seed), niter=NITER, seed=seed, verbose=False)
    log.info("coarse k-means of %d rows into %d lists in bf16 math", len(x), nlist)
    return _unit(cent)


def _unit(c: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.where(norms > 0, norms, 1)).astype(np.float32)


class _BF16Assign:
    """The training rows as ``faiss.contrib.clustering.kmeans`` sees them (its ``DatasetAssign``
    interface): each row's best centroid by inner product with the centroids normalised (spherical),
    from a bf16 product over the centroids in a fresh random order (ties fall at random); the
    per-centroid sums in float32.

    The product is [x, -r] · [c - m, 1]: r, each row's best score at the previous iteration, is a
    row constant (the best centroid does not depend on it, nor on its own rounding) that brings the
    deciding products near zero, where bf16's output steps are finest (~1e-4 instead of ~2e-3)."""

    def __init__(self, x: np.ndarray, seed: int):
        import torch

        self.x, self.mean, self.rng = x, x.mean(0), np.random.default_rng(seed)
        self.along = x @ self.mean   # x·m, each row's constant
        self.rows = torch.empty((len(x), x.shape[1] + 1), dtype=torch.bfloat16)
        self.rows[:, :-1] = torch.from_numpy(x)
        self.rows[:, -1] = 0

    def count(self) -> int:
        return self.x.shape[0]

    def dim(self) -> int:
        return self.x.shape[1]

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return self.x[indices]

    def assign_to(self, centroids: np.ndarray, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(best centroid per row, its inner product, the sum of each centroid's rows)."""
        import torch

        if weights is not None:
            raise ValueError("weighted k-means is not used here")
        cent = _unit(centroids)
        order = self.rng.permutation(len(cent))
        shifted = torch.ones((self.x.shape[1] + 1, len(cent)), dtype=torch.bfloat16)
        shifted[:-1] = torch.from_numpy((cent[order] - self.mean).T)
        best, score = np.empty(len(self.x), np.int64), np.empty(len(self.x), np.float32)
        with torch.inference_mode():
            for i in range(0, len(self.x), BLOCK):
                top, at = torch.matmul(self.rows[i:i + BLOCK], shifted).max(1)
                best[i:i + BLOCK] = order[at.numpy()]
                score[i:i + BLOCK] = top.float().numpy() - self.rows[i:i + BLOCK, -1].float().numpy()
            self.rows[:, -1] = torch.from_numpy(-score)   # x·(c - m) of the best: next time's r
            score += self.along   # x·c = x·(c - m) + x·m
            sums = torch.zeros(len(cent), self.x.shape[1]).index_add_(0, torch.from_numpy(best),
                                                                      torch.from_numpy(self.x)).numpy()
        return best, score, sums
