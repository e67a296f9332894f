"""Corruption is detected: on open (sizes, sampled fingerprints, Parquet shard ids; O(files)) and by
`retrieval verify` (every byte). Each error names the file."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.cli import main
from retrieval.errors import IndexFolderError
from tests.conftest import needs_shared, unit_vectors



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Shards of 400, 400 and 5 rows: IVF, IVF (vectors in the index codes) and Flat (in npy)."""
    out = tmp_path_factory.mktemp("integrity") / "idx"
    x = unit_vectors(805, 16, 0)
    rows = [{"key": f"k{i:05d}", "image_path": f"{i:05d}.jpg", "caption": "a caption of fixed size"} for i in range(805)]
    build_from_embeddings(out, x, x, {"arch": "synthetic"}, rows, shard_size=400, index_key="IVF8,Flat")
    return out


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_a_metadata_file_swapped_for_another_shards_is_refused(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    a, b = bad / "metadata" / "metadata_0000.parquet", bad / "metadata" / "metadata_0001.parquet"
    a.write_bytes(b.read_bytes())
    m = _manifest(bad)  # the scenario is a file of the same size: make the size check pass, as it would then
    m["shards"][0]["bytes"]["metadata"] = a.stat().st_size
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFolderError, match="metadata_0000.parquet: content differs"):
        open_index(bad)
    m = _manifest(bad)  # without file records (a folder from before them), the Parquet shard id names it
    for s in m["shards"]:
        s.pop("bytes"), s.pop("sample")
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFolderError, match="metadata_0000.parquet: holds the rows of shard 1, not shard 0"):
        open_index(bad)


def test_verify_finds_4_kb_of_zeros_inside_a_faiss_file(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    target = next(bad.glob("faiss/image_0001_g*.index"))
    data = bytearray(target.read_bytes())
    start = len(data) // 2 - 2048
    data[start:start + 4096] = bytes(4096)
    target.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["verify", str(bad)])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[0] == f"{target}: content differs from the manifest (sha256 mismatch)"
    assert "1 bad file(s)" in lines[-1] and len(lines) == 2
    with pytest.raises(IndexFolderError, match=f"{target.name}: content differs"):
        open_index(bad, verify=True)
    assert not (bad / "faiss" / "image_0001.index").exists()  # the pre-offsets index of the first build: gone
    ok = CliRunner().invoke(main, ["verify", str(folder), "--json"])
    report = json.loads(ok.output)
    assert ok.exit_code == 0 and report["ok"] and report["files"] > 10 and report["bytes"] > 0


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("rel", ["img_emb/img_emb_0002.npy", "metadata/metadata_0002.parquet",
                                 "faiss/text_0000_g*.index", "bias/*/nnn_image_0001.npy", "bias/*/bank_bsap_text.npy",
                                 "faiss/trained_image.index"])
def test_truncated_files_are_named_on_open(folder, tmp_path, rel):
    bad = _copy(folder, tmp_path)
    target = sorted(bad.glob(rel))[-1]  # the newest generation: the searchable one's files stay to the next publish
    _truncate(target)
    with pytest.raises(IndexFolderError, match=f"{target.name}: truncated"):
        open_index(bad)


@needs_shared
@pytest.mark.parametrize("rel", ["img_emb/img_emb_0001.npy", "bias/*/bsap_image_0002.npy"])
def test_truncated_files_are_one_line_in_search_and_serve_before_any_model_loads(flickr_index, tmp_path, rel):
    bad = _copy(flickr_index, tmp_path)
    target = next(bad.glob(rel))
    _truncate(target)
    for args in (["search", str(bad), "a dog"], ["serve", str(bad), "--port", "8999"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and f"{target.name}: truncated" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_truncated_file_without_a_record_is_still_named(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    m = _manifest(bad)
    for s in m["shards"]:
        s.pop("bytes"), s.pop("sample")
    (bad / "manifest.json").write_text(json.dumps(m))
    target = bad / "img_emb" / "img_emb_0002.npy"
    target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(IndexFolderError, match="img_emb_0002.npy is unreadable"):
        open_index(bad)


def test_quick_check_reads_a_bounded_amount_per_file(tmp_path):
    from retrieval.store.integrity import SAMPLE_BLOCK, SAMPLE_BLOCKS, fingerprint

    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(4 << 20))
    calls = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, *a):
            return self.f.seek(*a)

        def read(self, n=-1):
            data = self.f.read(n)
            calls.append(len(data))
            return data

    import builtins

    builtins.open = lambda p, mode="r", *a, **k: Counting(real_open(p, mode, *a, **k))
    try:
        fingerprint(path)
    finally:
        builtins.open = real_open
    assert sum(calls) <= SAMPLE_BLOCK * SAMPLE_BLOCKS < path.stat().st_size
