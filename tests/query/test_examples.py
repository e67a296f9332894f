"""Example queries, the relevance floor and the fluent builder: each strategy equals a direct numpy
computation on the stored vectors, examples never come back, a negative example pushes its
near-duplicates down, min_score returns fewer rows only when fewer qualify, and the builder, the
keyword API and the CLI give the same rows."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.cli import main
from retrieval.query.examples import best_score
from tests.conftest import unit_vectors

D, G = 16, 60


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 groups of 5 near-copies (rows g, g+60, ...), captions that are near their images."""
    rng = np.random.default_rng(0)
    base = unit_vectors(G, D, 1)
    x = np.concatenate([base + 0.05 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(5)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = x + 0.4 * unit_vectors(len(x), D, 2)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    rows = [{"key": f"k{i}", "image_path": "", "caption": f"group {i % G} photo {i}", "year": 2000 + i % 7}
            for i in range(len(x))]
    out = tmp_path_factory.mktemp("ex") / "idx"
    build_from_embeddings(out, x, t, {"arch": "synthetic"}, rows, shard_size=120)
    return out


def _stored(idx):
    ids = idx.ids()
    return ids, idx.embeddings(ids, "image")


def _brute(ids, x, scores, k, exclude):
    keep = ~np.isin(ids, exclude)
    order = np.lexsort((ids[keep], -scores[keep]))[:k]
    return ids[keep][order], scores[keep][order]


@pytest.mark.parametrize("strategy", ["average_vector", "sum_scores", "best_score"])
def test_each_strategy_equals_numpy_on_the_stored_vectors(folder, strategy):
    idx = open_index(folder)
    ids, x = _stored(idx)
    pos_ids, neg_ids = [3, 70], [9]
    pos, neg = x[np.searchsorted(ids, pos_ids)], x[np.searchsorted(ids, neg_ids)]
    if strategy == "average_vector":
        q = 2 * pos.mean(0) - neg.mean(0)
        want_scores = x @ (q / np.linalg.norm(q))
    elif strategy == "sum_scores":
        want_scores = x @ (pos.sum(0) - neg.sum(0))
    else:
        want_scores = best_score(x, pos, neg)
    want_ids, want_s = _brute(ids, x, want_scores, 10, pos_ids + neg_ids)
    s, got = idx.search().like(3, "k70").unlike("k9").strategy(strategy).limit(10).to_arrays()
    assert got[0].tolist() == want_ids.tolist()
    np.testing.assert_allclose(s[0], want_s, atol=2e-3)


def test_examples_are_left_out_and_a_negative_pushes_its_copies_down(folder):
    idx = open_index(folder)
    rows = idx.search().like("k5").limit(5).to_list()
    groups = [r["id"] % G for r in rows]
    assert 5 not in [r["id"] for r in rows] and groups[:4] == [5] * 4        # the other four copies first
    near = idx.search().like("k5").limit(30).to_arrays()[1][0].tolist()
    other = next(i % G for i in near if i % G != 5)                         # the nearest other group
    before = [i % G for i in near].index(other)
    after = idx.search().like("k5").unlike(f"k{other}").limit(30).to_arrays()[1][0].tolist()
    assert f"k{other}" not in {f"k{i}" for i in after}
    assert other not in [i % G for i in after][:before + 1]                  # its copies moved down


def test_examples_work_with_reranks_where_and_keywords(folder):
    idx = open_index(folder)
    for rerank in ("clip", "bsap", "hybrid", "nnn"):
        rows = idx.search().like("k5", "k65").rerank(rerank).where("year > 2002").limit(8).to_list()
        assert len(rows) == 8 and all(r["year"] > 2002 for r in rows) and not {5, 65} & {r["id"] for r in rows}
    rows = idx.search().like("k5").text_match("group 7").hybrid().limit(5).to_list()
    assert {r["id"] % G for r in rows} >= {5, 7}
    with pytest.raises(ValueError, match="takes no rerank"):
        idx.search().like("k5").strategy("best_score").rerank("nnn").to_list()
    with pytest.raises(ValueError, match="no item with key"):
        idx.search().like({"key": "nope"}).to_list()
    with pytest.raises(ValueError, match="negative examples need"):
        idx.query(negative=["k5"])


def test_min_score_returns_fewer_only_when_fewer_qualify(folder):
    idx = open_index(folder)
    q = idx.embeddings([5], "image")
    s_all, ids_all = idx.search(q, 300)
    cut = float(s_all[0, 20])
    s, ids = idx.search(q, 300, min_score=cut)
    assert (ids[0] >= 0).sum() == (s_all[0] >= cut).sum() and (s[0][ids[0] >= 0] >= cut).all()
    s, ids = idx.search(q, 10, min_score=-1.0)                              # everything qualifies
    assert (ids >= 0).all()
    floor = json.loads((folder / "manifest.json").read_text())["bias"]["floor"]
    assert floor["quantile"] == 0.99 and set(floor["floors"]) == {"text->image", "image->image", "image->text",
                                                                  "text->text"}
    auto = idx.search().like("k5").min_score("auto").limit(300).to_arrays()
    image_floor = floor["floors"]["image->image"]["clip"]
    assert (auto[0][0][auto[1][0] >= 0] >= image_floor).all() and 4 <= (auto[1][0] >= 0).sum() < 300
    with pytest.raises(ValueError, match="recorded for alpha"):
        idx.search().like("k5").rerank("nnn", alpha=0.3).min_score("auto").to_list()
    with pytest.raises(ValueError, match="pass a number"):
        idx.query(embedding=q[0], min_score="auto")


def test_the_floor_separates_pairs_from_non_pairs(folder):
    """On the index's own pairs: a caption finds its image above the recorded floor far more often
    than an unrelated image clears it (the 1 % the floor is set at)."""
    idx = open_index(folder)
    ids, x = _stored(idx)
    t = idx.embeddings(ids, "text")
    floor = json.loads((folder / "manifest.json").read_text())["bias"]["floor"]["floors"]["text->image"]["clip"]
    pair = (t * x).sum(1)
    other = (t * np.roll(x, 17, axis=0)).sum(1)
    assert (pair >= floor).mean() > 0.5 and (other >= floor).mean() < 0.05


def test_builder_query_and_cli_agree(folder):
    idx = open_index(folder)
    b = idx.search().like("k5").unlike("k9").where("year >= 2001").rerank("nnn").limit(6)
    rows = b.to_list()
    assert [r["id"] for r in rows] == [r["id"] for r in idx.query(positive=["k5"], negative=["k9"], where="year >= 2001",
                                                                   rerank="nnn", k=6)[0]]
    assert b.to_arrow().column("id").to_pylist() == [r["id"] for r in rows]
    r = CliRunner().invoke(main, ["search", str(folder), "--like", "k5", "--unlike", "k9", "--where", "year >= 2001",
                                  "--rerank", "nnn", "--k", "6", "--json"])
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["id"] for x in r.output.splitlines()] == [r["id"] for r in rows]
    kw = idx.search().text_match("group 7").limit(5).to_list()
    r = CliRunner().invoke(main, ["search", str(folder), "--text-match", "group 7", "--k", "5", "--json"])
    assert [json.loads(x)["id"] for x in r.output.splitlines()] == [r["id"] for r in kw]
    r = CliRunner().invoke(main, ["search", str(folder), "--like", "nope"])
    assert r.exit_code == 2 and "no item with key 'nope'" in r.output
    r = CliRunner().invoke(main, ["search", str(folder), "--like", "k5", "--min-score", "lots"])
    assert r.exit_code == 2 and "not a number or 'auto'" in r.output
    r = CliRunner().invoke(main, ["search", str(folder), "--like", "k5", "--strategy", "best_score", "--rerank", "nnn"])
    assert r.exit_code == 2 and "takes no rerank" in r.output


def test_builders_are_immutable_and_readable(folder):
    idx = open_index(folder)
    base = idx.search().like("k5")
    a, b = base.limit(3), base.where("year = 2001").limit(4)
    assert len(a.to_list()) == 3 and all(r["year"] == 2001 for r in b.to_list()) and base.spec.where is None
    assert "positive=('k5',)" in repr(a) and "k=3" in repr(a)


def test_to_pandas_needs_pandas_and_says_so(folder):
    import importlib.util

    b = open_index(folder).search().like("k5").limit(3)
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(ImportError, match="to_pandas needs pandas"):
            b.to_pandas()
    else:
        assert b.to_pandas()["id"].tolist() == [r["id"] for r in b.to_list()]
