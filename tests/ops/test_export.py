"""`retrieval export`: the live rows in clip-retrieval's layout, decoded from the index codes."""
import numpy as np
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.cli import main

from tests.conftest import read_layout, unit_vectors


def test_export_writes_the_live_rows_row_aligned_in_clip_retrievals_layout(tmp_path):
    x, t = unit_vectors(900, 16, 0), unit_vectors(900, 16, 1)
    t[::7] = 0  # items without a caption
    rows = [{"key": f"k{i}", "image_path": f"{i}.jpg", "caption": "" if i % 7 == 0 else f"c{i}"} for i in range(900)]
    src = tmp_path / "idx"
    build_from_embeddings(src, x, t, {"arch": "synthetic"}, rows, shard_size=400, index_key="IVF8,Flat")
    assert not (src / "img_emb").exists()  # IVF shards: the vectors live in the index codes only
    open_index(src).delete([f"k{i}" for i in range(0, 900, 3)] + [f"k{i}" for i in range(800, 900)])
    out = tmp_path / "exported"
    r = CliRunner().invoke(main, ["export", str(src), str(out)])
    assert r.exit_code == 0 and "exported 533 rows in 2 shard(s)" in r.output, r.output  # shard 2 is all deleted
    img, txt, meta = read_layout(out)
    keep = np.array([i for i in range(800) if i % 3])
    assert meta.column("key").to_pylist() == [f"k{i}" for i in keep]
    np.testing.assert_array_equal(img, x[keep].astype(np.float16))
    np.testing.assert_array_equal(txt, t[keep].astype(np.float16))
    r = CliRunner().invoke(main, ["export", str(src), str(out)])
    assert r.exit_code == 2 and "not an empty folder" in r.output
    r = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "img_only"), "--modalities", "image"])
    assert r.exit_code == 0 and not (tmp_path / "img_only" / "text_emb").exists()
