import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.errors import IndexFolderError
from retrieval.search import open_index

from .conftest import needs_shared
from .test_build import _first_captions, _layout

pytestmark = needs_shared


def test_sharded_search_equals_one_flat_index(flickr_index):
    idx = open_index(flickr_index)
    assert len(idx) == 1000 and len(idx.shards) == 4
    img, txt, _ = _layout(flickr_index)
    q = txt[:50].astype(np.float32)
    scores, ids = idx.search_vectors(q, k=20)
    brute = q @ img.astype(np.float32).T
    want = np.argsort(-brute, axis=1, kind="stable")[:, :20]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, want, 1), atol=1e-5)
    assert (ids == want).mean() > 0.99  # ties at fp16 resolution may swap
    s_all, i_all = idx.search_vectors(q[:2], k=5000)  # k above the corpus returns the corpus
    assert i_all.shape == (2, 1000) and sorted(i_all[0].tolist()) == list(range(1000))


def test_text_search_finds_the_captioned_photo(flickr_index, tiny_clip):
    idx = open_index(flickr_index, tiny_clip)
    first = _first_captions()
    names, caps = list(first)[:40], list(first.values())[:40]
    hits = [n in [r["key"] for r in res] for n, res in zip(names, idx.search_text(caps, k=5))]
    assert np.mean(hits) >= 0.6
    top = idx.search_text([caps[0]], k=3)[0]
    assert set(top[0]) >= {"id", "key", "image_path", "caption", "captions", "score"}
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]


def test_open_refuses_misaligned_metadata(flickr_index, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(flickr_index, bad)
    meta = bad / "metadata" / "metadata_0001.parquet"
    pq.write_table(pq.read_table(meta).slice(0, 299), meta)
    with pytest.raises(IndexFolderError, match="metadata has 299 rows"):
        open_index(bad)
    np.save(bad / "img_emb" / "img_emb_0002.npy", np.zeros((3, 256), np.float16))
    pq.write_table(pa.table({"key": ["x"]}), meta)
    with pytest.raises(IndexFolderError, match="rows, manifest says"):
        open_index(bad)


def test_open_refuses_another_model(flickr_index):
    from retrieval.models import load_model

    with pytest.raises(IndexFolderError, match="was built with"):
        open_index(flickr_index, load_model("ViT-B-32", "random", device="cpu"))


def test_bad_queries(flickr_index):
    idx = open_index(flickr_index)
    with pytest.raises(ValueError, match="dim"):
        idx.search_vectors(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="k must be positive"):
        idx.search_vectors(np.zeros((1, 256), np.float32), k=0)
    with pytest.raises(IndexFolderError, match="without a model"):
        idx.search_text(["a dog"])
