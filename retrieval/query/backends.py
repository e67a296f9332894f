"""Search backends behind one interface: ``search(q, k) -> (scores [nq, k], global ids [nq, k])``.

- ``FaissBackend``: the shards' faiss indexes; a thread per shard (faiss releases the GIL), merged
  top-k. On GPU (``faiss.get_num_gpus() > 0``) the shards are copied to the GPUs; faiss GPU limits
  k and nprobe to 2048, so larger requests run on the CPU copies. Row selections, full top-k:
  ``faiss_search``.
- ``TorchBackend``: exact search with torch: all of a modality's embeddings in one tensor (fp16 on
  CUDA, fp32 on CPU), matmul + top-k in query batches. Optional per-item offsets make it the exact
  BSAP/NNN search too; a selection masks excluded rows. Used automatically on machines with CUDA
  torch but CPU-only faiss.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from .faiss_search import search_shards
from .topk import merge_topk  # noqa: F401 - re-exported
from .selection import Selection

GPU_MAX_K = 2048
BACKENDS = ("auto", "faiss-cpu", "faiss-gpu", "torch")


def pick_backend(name: str = "auto") -> str:
    """Resolve 'auto': faiss-gpu if faiss sees GPUs, else torch if CUDA, else faiss-cpu."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    import faiss

    if faiss.get_num_gpus() > 0:
        return "faiss-gpu"
    if "torch" not in sys.modules and not _nvidia_device():
        return "faiss-cpu"  # no GPU: do not load torch (hundreds of MB) just to ask
    import torch

    return "torch" if torch.cuda.is_available() else "faiss-cpu"


def _nvidia_device() -> bool:
    """Whether this machine exposes an NVIDIA device (the driver's device nodes)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0") or sys.platform == "win32"


class FaissBackend:
    def __init__(self, indexes: list, offsets: np.ndarray, gpu: bool = False):
        self.cpu, self.offsets = indexes, offsets
        self.gpu = None
        if gpu:
            import faiss

            if faiss.get_num_gpus() == 0:
                raise ValueError("backend faiss-gpu requested but faiss sees no GPU")
            self.gpu = [faiss.index_cpu_to_all_gpus(ix) for ix in indexes]
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(len(indexes), os.cpu_count() or 1)))

    def search(self, q: np.ndarray, k: int, selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the shards; ``selection`` limits the rows (GPU indexes ignore selectors: the CPU
        copies answer selective searches)."""
        plain = selection is None or selection.is_everything
        idx = self.gpu if self.gpu is not None and k <= GPU_MAX_K and plain else self.cpu
        return search_shards(idx, q, k, self.offsets, self.pool, None if plain else selection)


class TorchBackend:
    def __init__(self, embeddings: list[np.ndarray], device: Optional[str] = None, batch: int = 1024):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.x = torch.cat([torch.from_numpy(np.array(e)).to(self.device, dtype) for e in embeddings])  # copy: mmaps are read-only
        self.batch = batch

    def search(self, q: np.ndarray, k: int, offsets: Optional[np.ndarray] = None,
               selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of s - offsets among the rows ``selection`` allows (excluded rows: -inf)."""
        import torch

        if selection is not None and not selection.is_everything:
            excluded = np.where(selection.flat(), 0.0, np.inf).astype(np.float32)
            offsets = excluded if offsets is None else np.asarray(offsets, np.float32) + excluded
            k = min(k, selection.total)
        k = min(k, self.x.shape[0])
        off = None if offsets is None else torch.as_tensor(np.asarray(offsets), device=self.device, dtype=torch.float32)
        out_s, out_i = [], []
        with torch.inference_mode():
            for i in range(0, len(q), self.batch):
                qq = torch.as_tensor(q[i:i + self.batch], device=self.device).to(self.x.dtype)
                s = (qq @ self.x.T).float()
                if off is not None:
                    s -= off
                top = torch.topk(s, k, dim=1)
                out_s.append(top.values.cpu().numpy())
                out_i.append(top.indices.cpu().numpy().astype(np.int64))
        if not out_s:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(out_s), np.concatenate(out_i)
