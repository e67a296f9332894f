import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "RETRIEVAL_CACHE_DIR" not in os.environ:  # the cached text towers of this run, not the user's
    import tempfile

    os.environ["RETRIEVAL_CACHE_DIR"] = _OWN_CACHE = tempfile.mkdtemp(prefix="retrieval-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETRIEVAL_SHARED", ROOT.parent / "shared"))
TINY = SHARED / "models" / "tiny-clip-mix"
FLICKR = SHARED / "data" / "flickr8k_1k"



def pytest_sessionfinish(session, exitstatus):
    if "_OWN_CACHE" in globals():
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


needs_shared = pytest.mark.skipif(not TINY.is_dir() or not FLICKR.is_dir(), reason="../shared fixtures not present")


@pytest.fixture(scope="session")
def tiny_clip():
    if not TINY.is_dir():
        pytest.skip("../shared/models/tiny-clip-mix not present")
    from retrieval import load_model

    return load_model(str(TINY), device="cpu")


@pytest.fixture(scope="session")
def flickr_index(tmp_path_factory, tiny_clip):
    """The Flickr 1k fixture indexed with the tiny model in 4 shards (300 rows each, last 100)."""
    if not FLICKR.is_dir():
        pytest.skip("../shared/data/flickr8k_1k not present")
    from retrieval import build_index

    out = tmp_path_factory.mktemp("flickr") / "idx"
    build_index(FLICKR / "captions.csv", out, image_root=str(FLICKR / "images"), shard_size=300,
                batch_size=64, workers=2, progress=False, clip=tiny_clip)
    return out


def ivf_shards(trained, x, bounds, nprobe=None) -> list:
    """Shards sharing ``trained``'s quantizer: a copy of it per (lo, hi) in ``bounds`` holding rows
    x[lo:hi], searched at ``nprobe`` (None: the copy's own)."""
    import faiss

    shards = []
    for lo, hi in bounds:
        ix = faiss.clone_index(trained)
        ix.add(x[lo:hi])
        if nprobe is not None:
            ix.nprobe = nprobe
        shards.append(ix)
    return shards


def unit_vectors(n: int, d: int, seed: int):
    """n seeded random unit vectors of dim d (float32)."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def paired_vectors(n: int, d: int, seed: int = 0):
    """(images, captions): n seeded unit vectors of dim d, and a caption for each near it (noise 0.3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = x + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x, t / np.linalg.norm(t, axis=1, keepdims=True)


def first_captions() -> dict[str, str]:
    """The Flickr fixture's first caption of each image, in file order ({image name: caption})."""
    import csv

    with open(FLICKR / "captions.csv", newline="") as f:
        first: dict[str, str] = {}
        for row in csv.DictReader(f):
            first.setdefault(row["image"], row["caption"])
    return first


def read_layout(folder):
    """(image embeddings, text embeddings, metadata table) of an index folder, read with plain numpy /
    pyarrow as embedding-reader users would."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    names = sorted(p.name for p in (folder / "img_emb").iterdir())
    img = np.concatenate([np.load(folder / "img_emb" / f) for f in names])
    txt = np.concatenate([np.load(folder / "text_emb" / f.replace("img_emb", "text_emb")) for f in names])
    meta = pa.concat_tables([pq.read_table(folder / "metadata" / f.replace("img_emb", "metadata").replace(".npy", ".parquet"))
                             for f in names])
    return img, txt, meta


def bias_folder(index_folder) -> Path:
    """The folder of an index's current bias generation (the manifest's ``bias.dir``)."""
    import json

    m = json.loads((Path(index_folder) / "manifest.json").read_text())
    return Path(index_folder) / (m["bias"].get("dir") or "bias")


def make_image(path, size=(40, 30), color=(200, 30, 30), mode="RGB", fmt=None):
    from PIL import Image

    im = Image.new(mode, size, color)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path
