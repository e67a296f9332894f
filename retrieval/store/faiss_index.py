"""Build, train and tune one shard's faiss index (inner product), with the key from :mod:`.keys`.

Training uses a random sample (never the first rows); GPU train/add when faiss has GPUs; search
parameters (nprobe / efSearch) are tuned once on self-queries to a recall target.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from .assign import top_k
from .keys import compressed, pool_size, training_rows
from .kmeans import coarse_centroids

log = logging.getLogger("retrieval.build")
PQ_TRAIN_ITER = 10            # k-means iterations per PQ sub-quantizer (faiss: 25)
PQ_POINTS_PER_CENTROID = 64   # training points per PQ centroid (faiss: 256): 16,384 for 8-bit codes


def validate_key(key: str, d: int) -> None:
    """Raise ValueError if faiss cannot build an index from ``key`` at dim ``d``."""
    import faiss

    try:
        faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "rejected by faiss"
        raise ValueError(f"invalid faiss index key {key!r} for dim {d}: {msg[:200]}") from None


def build_faiss_index(vectors: np.ndarray, key: str, seed: int = 0, use_gpu: Optional[bool] = None,
                      trained=None, train_rows: Optional[np.ndarray] = None, extra: int = 0):
    """Train (on a random sample) and fill an inner-product faiss index with ``vectors``.

    ``trained``: an empty trained index of ``key`` to fill instead (no training: appended shards reuse
    the folder's quantizer); ``train_rows``: the rows training may sample (default all); ``extra``:
    the last ``extra`` coordinates are offsets (``store.combined``): an IVF coarse quantiser is
    trained with them at zero, so lists and probing do not depend on them.
    """
    import faiss

    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if trained is not None:
        index = faiss.clone_index(trained)
        index.add(x)
        return index
    pool = np.arange(n) if train_rows is None else np.asarray(train_rows, np.int64)
    return _train_and_add(new_index(d, key), key, lambda: x[training_rows(pool, key, seed)], x, extra, use_gpu)


def gpu_for(key: str) -> bool:
    """Whether faiss trains and adds ``key`` on GPU here (faiss sees a GPU; not HNSW)."""
    import faiss

    return faiss.get_num_gpus() > 0 and "HNSW" not in key


def new_index(d: int, key: str):
    """An empty inner-product index of ``key`` at dim ``d``; an SQfp16 IVF stores the vectors
    themselves (no residual)."""
    import faiss

    index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    ivf_sq = faiss.downcast_index(index)
    if isinstance(ivf_sq, faiss.IndexIVFScalarQuantizer) and ivf_sq.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        ivf_sq.by_residual = False  # codes are the fp16 vectors themselves: decodable, patchable, faster for IP
    if isinstance(ivf_sq, faiss.IndexIVFPQ):
        ivf_sq.do_polysemous_training = False  # the factory's default: minutes of code reordering for
        # Hamming filtering, which nothing here uses; and k-means of a few dims runs at a few GFLOP/s:
        ivf_sq.pq.cp.niter = PQ_TRAIN_ITER    # a smaller, shorter training (candidates are re-scored exactly)
        ivf_sq.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    return index


def trained_empty(sample: np.ndarray, key: str, extra: int = 0, use_gpu: Optional[bool] = None):
    """An empty index of ``key`` trained on ``sample`` [n, d] (on GPU when faiss has one; ``extra``:
    see build_faiss_index)."""
    return _train_and_add(new_index(sample.shape[1], key), key, lambda: sample, None, extra, use_gpu)


def _train_and_add(index, key: str, sample: Callable[[], np.ndarray], x: Optional[np.ndarray], extra: int,
                   use_gpu: Optional[bool]):
    """Train ``index`` on ``sample()`` when it needs training (the sample is drawn only then), add
    ``x`` if given; on GPU (one round trip) when ``use_gpu`` (None: ``gpu_for``); the CPU copy."""
    import faiss

    use_gpu = gpu_for(key) if use_gpu is None else use_gpu
    work = faiss.index_cpu_to_all_gpus(index) if use_gpu else index
    if not work.is_trained:
        s = np.ascontiguousarray(sample(), dtype=np.float32)
        if extra:
            _train_coarse(work, key, s, extra)
        work.train(s)
    if x is not None:
        work.add(x)
    return faiss.index_gpu_to_cpu(work) if use_gpu else index


def _train_coarse(index, key: str, sample: np.ndarray, extra: int) -> None:
    """Fill an IVF's coarse quantiser with centroids trained on ``sample`` whose last ``extra``
    coordinates are zeroed (faiss then skips its own coarse training). Not under a pre-transform
    (OPQ rotates every coordinate together)."""
    import faiss

    ix = faiss.downcast_index(index)
    if not isinstance(ix, faiss.IndexIVF) or ix.quantizer.ntotal:
        return
    d = sample.shape[1] - extra  # trained without the zeroed coordinates (same centroids, fewer flops)
    centroids = np.zeros((ix.nlist, sample.shape[1]), np.float32)
    centroids[:, :d] = coarse_centroids(sample[:, :d], ix.nlist)
    ix.quantizer.add(centroids)


class ExactTopK:
    """The exact top-k ids by inner product of queries [nq, d] over vectors given a chunk at a time
    (faiss ``knn`` per chunk, merged in a ``ResultHeap``); -1 where fewer than k were seen."""

    def __init__(self, queries: np.ndarray, k: int):
        import faiss

        self.q, self.k = np.ascontiguousarray(queries, np.float32), k
        self.heap = faiss.ResultHeap(len(self.q), k, keep_max=True)

    def add(self, part: np.ndarray, first: int) -> None:
        """Fold in the vectors ``part`` [m, d], whose global ids start at ``first``."""
        import faiss

        part, k = np.ascontiguousarray(part, np.float32), min(self.k, len(part))
        got = top_k(self.q, part, k)   # the faster float32 kernel, where there is one
        s, ids = got if got is not None else faiss.knn(self.q, part, k, metric=faiss.METRIC_INNER_PRODUCT)
        if s.shape[1] < self.k:  # a chunk smaller than k
            s = np.pad(s, ((0, 0), (0, self.k - s.shape[1])), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, self.k - ids.shape[1])), constant_values=-1)
        self.heap.add_result(s, np.where(ids >= 0, ids + first, -1))

    def ids(self) -> np.ndarray:
        self.heap.finalize()
        return self.heap.I


def exact_knn(q: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Ids [nq, k] of the k largest inner products of ``q`` among ``vectors`` (any float dtype), read
    ``chunk`` rows at a time."""
    top = ExactTopK(q, k)
    for i in range(0, len(vectors), chunk):
        top.add(vectors[i:i + chunk], i)
    return top.ids()


def index_rows(path) -> int:
    """The number of vectors a faiss index file holds, from its 16-byte header (no loading)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16:
        raise ValueError("too short for a faiss index")
    return struct.unpack("<q", head[8:16])[0]


def tune_queries(vectors: np.ndarray, n_queries: int = 500, seed: int = 0,
                 query_rows: Optional[np.ndarray] = None) -> np.ndarray:
    """The self-queries tuning uses: ``n_queries`` random rows of ``query_rows`` (default all), float32."""
    pool = np.arange(len(vectors)) if query_rows is None else np.asarray(query_rows, np.int64)
    picks = np.random.default_rng(seed).choice(len(pool), min(n_queries, len(pool)), replace=False)
    return np.asarray(vectors[np.sort(pool[picks])], np.float32)


def _rescored(cand: np.ndarray, plain: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """The exact top-``k`` ids among each query's candidates (what ``query.rescore`` returns)."""
    out = np.full((len(cand), k), -1, np.int64)
    for j, c in enumerate(cand):
        c = np.sort(c[c >= 0])
        s = np.asarray(vectors[c], np.float32) @ plain[j]
        best = c[np.argsort(-s, kind="stable")[:k]]
        out[j, :len(best)] = best
    return out


def tune_params(index, vectors: np.ndarray, key: str, recall: float = 0.95, k: int = 10,
                n_queries: int = 500, seed: int = 0, query_rows: Optional[np.ndarray] = None,
                truth: Optional[tuple[np.ndarray, np.ndarray]] = None) -> str:
    """Smallest nprobe/efSearch whose recall@k on self-queries reaches ``recall`` ('' for Flat).

    ``vectors`` [n, d] (any float dtype) are the items without the index's extra coordinates
    (``index.d - d``: offsets and padding, ``store.combined``): the queries meet zeros there, so the
    exact neighbours are those of the items alone, computed a chunk at a time. ``truth``: (queries,
    their exact top-k ids) already computed (``store.combined.add_combined`` does it while adding)."""
    import faiss

    if key == "Flat" or len(vectors) == 0 or (query_rows is not None and len(query_rows) == 0):
        return ""
    k = min(k, len(vectors))
    plain, truth_ids = truth if truth is not None else (None, None)
    if plain is None:
        plain = tune_queries(vectors, n_queries, seed, query_rows)
        truth_ids = exact_knn(plain, vectors, k)
    d = plain.shape[1]
    q = np.zeros((len(plain), index.d), np.float32)  # plain queries: [e, 0, 0] (the offsets coordinates meet zeros)
    q[:, :d] = plain
    truth = truth_ids[:, :k]
    ps = faiss.ParameterSpace()
    if "HNSW" in key and "IVF" not in key:
        name, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        nlist = faiss.extract_index_ivf(index).nlist
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if v <= nlist]
    extra = ",quantizer_efSearch=128" if "_HNSW" in key else ""
    pool = pool_size(k) if compressed(key) else k   # a compressed index's pool is re-scored exactly
    best, got_recall = f"{name}={values[-1]}{extra}", 0.0
    for v in values:
        params = f"{name}={v}{extra}"
        ps.set_index_parameters(index, params)
        _, got = index.search(q, pool)
        if pool > k:
            got = _rescored(got, plain, vectors, k)
        got_recall = sum(len(set(a) & set(b)) for a, b in zip(got.tolist(), truth.tolist())) / truth.size
        if got_recall >= recall:
            best = params
            break
    if got_recall < recall:
        log.warning("%s: %s reaches recall@%d %.3f < the target %.2f on %d self-queries; searching with it",
                    key, best, k, got_recall, recall, len(q))
    ps.set_index_parameters(index, best)
    return best
