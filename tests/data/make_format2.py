"""How tests/data/format2 was made: the engine at commit da16967 (format 2), run as
    PYTHONPATH=<a checkout of da16967> python tests/data/make_format2.py tests/data/format2
Kept for the record; the tests read the folder it wrote, never run this."""
import sys
import numpy as np
import retrieval
from retrieval import build_from_embeddings, open_index
out = sys.argv[1]
rng = np.random.default_rng(0)
c = rng.standard_normal((8, 16)).astype(np.float32)
def clustered(n, seed):
    r = np.random.default_rng(seed)
    x = c[r.integers(0, 8, n)] + 0.4 * r.standard_normal((n, 16)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
n = 325
img, txt = clustered(n, 1), clustered(n, 2)
txt[::10] = 0  # every 10th row has no caption
rows = [{"key": f"k{i:04d}", "image_path": f"{i:04d}.jpg", "caption": "" if i % 10 == 0 else f"caption {i}"} for i in range(n)]
build_from_embeddings(out, img, txt, {"arch": "synthetic", "logit_scale": 50.0}, rows, shard_size=160,
                      index_key="IVF8,Flat", bias_bank="corpus")
idx = open_index(out)
idx.delete(["k0003", "k0161"])
print(retrieval.__file__)
