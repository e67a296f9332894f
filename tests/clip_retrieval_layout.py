"""A clip-retrieval ``inference`` output folder, written the way its ``OutputSink`` writes one
(clip_retrieval/clip_inference/writer.py, 2.45.0): per partition ``img_emb/img_emb_{i}.npy`` and
``text_emb/text_emb_{i}.npy`` (fp16, L2-normalised, ``i`` zero-padded to log10(partitions) + 1
digits) and ``metadata/metadata_{i}.parquet`` (image_path, caption, then the input's other columns).
clip-retrieval itself cannot be installed here (its dependencies pin numpy<2 and an old pyarrow), so
this writes the identical layout with numpy + pyarrow; clip-retrieval writes the Parquet through
pandas, whose RangeIndex is schema metadata only, so the columns are the same."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def write_inference_folder(folder, img: np.ndarray, txt: Optional[np.ndarray], columns: dict[str, Sequence],
                           part_rows: Sequence[int], dtype=np.float16) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    assert sum(part_rows) == len(img)
    width = int(math.log10(len(part_rows))) + 1
    for sub in ("img_emb", "metadata") + (("text_emb",) if txt is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lo = 0
    for i, n in enumerate(part_rows):
        s = str(i).zfill(width)
        np.save(folder / "img_emb" / f"img_emb_{s}.npy", np.asarray(img[lo:lo + n], dtype))
        if txt is not None:
            np.save(folder / "text_emb" / f"text_emb_{s}.npy", np.asarray(txt[lo:lo + n], dtype))
        table = pa.table({c: list(v[lo:lo + n]) for c, v in columns.items()})
        pq.write_table(table, folder / "metadata" / f"metadata_{s}.parquet")
        lo += n
    return folder
