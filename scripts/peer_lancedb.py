"""The LanceDB peer of ``bench_write_path.py``: LanceDB 0.40's ``create_table`` + ``create_index``
(IVF_FLAT, dot, the same partitions) on the same image and text vectors, then 10k-row ``add`` calls
(LanceDB appends them unindexed). It runs in LanceDB's own environment (not a dependency of ours):

    python3 -m venv /tmp/lancevenv && /tmp/lancevenv/bin/pip install lancedb==0.40.0
    .venv/bin/python scripts/bench_write_path.py --parts build,lance --lancedb-python /tmp/lancevenv/bin/python
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Optional

_LANCE = """
import sys, time, tempfile, json
import numpy as np, pyarrow as pa, lancedb
sys.path.insert(0, sys.argv[1])
from synthetic import unit_vectors
n, d, lists = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
img, txt = unit_vectors(n, d, 4, clusters=256, spread=0.5), unit_vectors(n, d, 5, clusters=256, spread=0.5)

def table(a, b, keys):
    return pa.table({"key": keys, "image": pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), d),
                     "text": pa.FixedSizeListArray.from_arrays(pa.array(b.ravel()), d)})

data = table(img, txt, [f"k{i}" for i in range(n)])
db = lancedb.connect(tempfile.mkdtemp())
t = time.perf_counter()
tbl = db.create_table("t", data)
t_table = time.perf_counter() - t
for col in ("image", "text"):
    tbl.create_index(metric="dot", num_partitions=lists, vector_column_name=col, index_type="IVF_FLAT")
t_total = time.perf_counter() - t
adds = []
for j in range(4):
    a, b = (unit_vectors(10_000, d, 77 + 2 * j + o, clusters=256, spread=0.5) for o in (0, 1))
    batch = table(a, b, [f"a{j}_{i}" for i in range(10_000)])
    t = time.perf_counter(); tbl.add(batch); adds.append(time.perf_counter() - t)
print(json.dumps({"table": t_table, "total": t_total, "add_10k": float(np.median(adds[1:]))}))
"""


def lancedb_build(n: int, d: int, lists: int, python: str) -> Optional[dict]:
    """{"table", "total", "add_10k"} seconds from LanceDB run by ``python``, or None (said) where that
    Python is missing."""
    if not Path(python).exists():
        print(f"LanceDB: {python} not found, skipped (see scripts/peer_lancedb.py)")
        return None
    out = subprocess.run([python, "-c", _LANCE, str(Path(__file__).resolve().parent), str(n), str(d), str(lists)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
