"""What every path that writes rows checks first (build, ``build_from_embeddings``, ``add_embeddings``,
``import``): vectors finite and L2-normalised (keys: ``store.rows``). Pure; ValueError naming the
first bad row."""
from __future__ import annotations

import numpy as np

NORM_TOLERANCE = 1e-2  # fp16 rounding moves a unit norm by ~1e-3


def check_unit_rows(x: np.ndarray, name: str, zero_ok: bool = False, block: int = 65536, first: int = 0) -> None:
    """ValueError unless every row of ``x`` is finite and L2-normalised (all zeros allowed with
    ``zero_ok``: an item without a caption). Scores are cosines only for unit vectors, and one
    infinite row would rank first for every query."""
    for i in range(0, len(x), block):
        part = np.asarray(x[i:i + block], np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", part, part))  # no [block, d] temporary, unlike linalg.norm
        bad = ~(np.abs(norms - 1) <= NORM_TOLERANCE) & ~((norms == 0) if zero_ok else False)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            what = "NaN or infinite values" if not np.isfinite(norms[j]) else f"norm {norms[j]:.4g}"
            raise ValueError(f"{name}: row {first + i + j} has {what}; pass finite, L2-normalised rows "
                             f"(x / np.linalg.norm(x, axis=1, keepdims=True))"
                             f"{' or zeros for no caption' if zero_ok else ''}")
