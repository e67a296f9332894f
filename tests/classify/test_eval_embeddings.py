"""`retrieval eval` on an index built from embeddings alone: label-column relevance, external query
embeddings with labels, and --plot; no model is loaded."""
import json

import numpy as np
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.classify import eval_retrieval
from retrieval.cli import main
from tests.conftest import unit_vectors


def _labelled_index(tmp_path, n=600, classes=12, d=32):
    rng = np.random.default_rng(0)
    centres = unit_vectors(classes, d, 1)
    y = rng.integers(0, classes, n)
    img = centres[y] + 0.08 * rng.standard_normal((n, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = centres[y]                      # every caption of a class is the same "prompt" (duplicates)
    rows = [{"key": f"k{i}", "image_path": "", "caption": f"class {c}", "label": f"c{c}"} for i, c in enumerate(y)]
    build_from_embeddings(tmp_path / "idx", img, txt, {"arch": "synthetic"}, rows, shard_size=250, index_key="Flat")
    return tmp_path / "idx", centres, y


def test_label_column_relevance_and_external_queries(tmp_path):
    folder, centres, y = _labelled_index(tmp_path)
    idx = open_index(folder)
    own = eval_retrieval(idx, (1, 5), methods=("clip",))
    by_label = eval_retrieval(idx, (1, 5), methods=("clip",), label_column="label")
    t2i = {r["direction"]: r for r in by_label}
    # with duplicate captions the own-row truth is a lottery; the label makes it well posed
    assert t2i["text→image"]["R@1"] == 1.0 and t2i["image→text"]["R@1"] == 1.0
    assert min(r["R@1"] for r in own) < 0.2
    q = eval_retrieval(idx, (1, 3), methods=("clip", "nnn"), label_column="label",
                       queries=(centres, [f"c{c}" for c in range(len(centres))], "image"))
    assert [r["direction"] for r in q] == ["queries→image"] * 2 and q[0]["R@1"] == 1.0
    assert len(q[0]["curve"]) == 3 and q[0]["curve"] == sorted(q[0]["curve"])


def test_cli_eval_without_a_model_json_and_plot(tmp_path):
    folder, centres, _ = _labelled_index(tmp_path)
    np.save(tmp_path / "q.npy", centres * 3.0)  # not normalised: the CLI normalises
    (tmp_path / "q.txt").write_text("\n".join(f"c{c}" for c in range(len(centres))) + "\n")
    r = CliRunner().invoke(main, ["eval", str(folder), "--label-column", "label", "--queries", str(tmp_path / "q.npy"),
                                  "--query-labels", str(tmp_path / "q.txt"), "--k", "1,2", "--plot",
                                  str(tmp_path / "curves.png"), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["retrieval"]
    assert {x["method"] for x in rows} == {"clip", "bsap", "hybrid", "nnn"} and all(x["R@1"] == 1.0 for x in rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(main, ["eval", str(folder)])  # the table, own rows, no model loaded
    assert r.exit_code == 0 and "text→image" in r.output and "curve" not in r.output
    for args, msg in ((["--queries", str(tmp_path / "q.npy")], "go together"),
                      (["--label-column", "nope"], "no metadata column 'nope'"),
                      (["--k", "0"], "positive integers"),
                      (["--plot", str(tmp_path / "x.svg")], "a .png or .html")):
        r = CliRunner().invoke(main, ["eval", str(folder), *args])
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
