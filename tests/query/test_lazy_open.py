"""Lazy, memory-mapped open: the manifest and file headers are checked on open, a modality's indexes
load on first use, and a misaligned folder is still refused before any search."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.errors import IndexFolderError

from tests.conftest import unit_vectors


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """IVF shards of 600 and 400 rows."""
    out = tmp_path_factory.mktemp("lazy") / "idx"
    x, t = unit_vectors(1000, 16, 0), unit_vectors(1000, 16, 1)
    build_from_embeddings(out, x, t, {"arch": "synthetic"}, shard_size=600, index_key="IVF8,Flat")
    return out


def test_open_loads_no_index_and_a_search_loads_only_its_modality(folder):
    idx = open_index(folder)
    shards = idx.shard_set
    assert shards._indexes == {}
    idx.search(unit_vectors(3, 16, 2), 5)  # text -> image: image indexes only
    assert sorted(shards._indexes) == [("image", 0), ("image", 1)]
    assert _list_owners(shards.index(0, "image")) == {False}  # the lists are views of the mapped file
    assert _list_owners(open_index(folder, mmap=False).shard_set.index(0, "image")) == {True}  # read into RAM


def _list_owners(index) -> set:
    import faiss

    inv = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    return {inv.codes.at(i).is_owned for i in range(inv.nlist)}


def test_mmap_and_ram_copies_answer_the_same(folder):
    q = unit_vectors(20, 16, 3)
    for rerank in ("clip", "bsap", "nnn"):
        a = open_index(folder).search(q, 10, rerank=rerank)
        b = open_index(folder, mmap=False).search(q, 10, rerank=rerank)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_an_index_file_of_another_shard_is_refused_on_open(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    m = json.loads((bad / "manifest.json").read_text())
    a, b = m["shards"][0]["files"]["image_index"], m["shards"][1]["files"]["image_index"]
    (bad / a).write_bytes((bad / b).read_bytes())
    for s in m["shards"]:  # a folder without file records: only the faiss header can tell
        s.pop("bytes"), s.pop("sample"), s.pop("sha256")
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFolderError, match="shard 0: image index holds 400 vectors, manifest says 600"):
        open_index(bad)


def test_searching_an_index_never_imports_torch(folder):
    code = ("import sys, numpy as np; from retrieval import open_index; idx = open_index(sys.argv[1]); "
            "q = np.ones((2, 16), np.float32) / 4; "
            "[idx.search(q, 5, rerank=r) for r in ('clip', 'bsap', 'nnn', 'hybrid')]; "
            "idx.search(q, 5, target='text'); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
