"""Keyword search (BM25 over the shards' full-text files) and keyword + CLIP fusion: exact matching
sets through appends, deletes and compaction, BM25 equal to a direct computation with whole-folder
statistics, literal matches above borderline CLIP hits, k results whenever k qualify, one-line errors."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import add_embeddings, build_from_embeddings, open_index
from retrieval.cli import main
from retrieval.ops import compact
from retrieval.query.fusion import rrf, weighted
from retrieval.query.keyword import KeywordError, parse
from tests.conftest import unit_vectors

D, N = 16, 3000
WORDS = ["dog", "cat", "beach", "red", "car", "tree", "river", "child", "ball", "grass", "snow", "city"]
RARE = "zyxwvu"


def _caption(i: int, rng) -> str:
    words = [WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(3, 9))]
    if i % 431 == 7:
        words.insert(int(rng.integers(0, len(words))), RARE)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = [{"key": f"k{i}", "image_path": "", "caption": _caption(i, rng), "title": f"item {i}"} for i in range(N)]
    out = tmp_path_factory.mktemp("kw") / "idx"
    build_from_embeddings(out, unit_vectors(N, D, 1), unit_vectors(N, D, 2), {"arch": "synthetic"}, rows,
                          shard_size=700, index_key="IVF8,Flat")
    return out, rows


def _with(rows, word):
    return {i for i, r in enumerate(rows) if word in r["caption"].split()}


def _bm25(rows, live, query_words, shard_size=700, textless=0):
    """BM25 (k1 1.2, b 0.75) with N and df over every row written (deleted ones too, and ``textless``
    rows in shards of their own), each row's length against its shard's mean length (tantivy's
    length normalisation is per index)."""
    docs = [r["caption"].split() for r in rows]
    n = len(docs) + textless
    avgdl = {s: np.mean([len(d) for d in docs[s:s + shard_size]]) for s in range(0, n, shard_size)}
    out = {}
    for i in live:
        s = 0.0
        for w in query_words:
            df = sum(w in d for d in docs)
            tf = docs[i].count(w)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(docs[i]) / avgdl[i - i % shard_size]))
        if s:
            out[i] = s
    return out


def test_a_rare_token_finds_exactly_its_captions(corpus):
    folder, rows = corpus
    idx = open_index(folder)
    want = _with(rows, RARE)
    s, ids = idx.keyword_search(RARE, 100)
    assert set(ids[0][ids[0] >= 0].tolist()) == want and len(want) == 7 and (ids[0] >= 0).sum() == 7
    assert idx.keyword_search(RARE.upper(), 100)[1][0].tolist()[:7] == ids[0].tolist()[:7]   # case folded
    assert (idx.keyword_search("zyxwv", 10)[1] < 0).all()                                    # whole words only
    assert set(idx.keyword_search("zyxw*", 10)[1][0][:7].tolist()) == want                  # a prefix


def test_scores_are_bm25_over_the_whole_folder(corpus):
    folder, rows = corpus
    idx = open_index(folder)
    for query in ("beach OR snow", "red car", f"{RARE} OR tree"):
        words = [w for w in query.split() if w != "OR"]
        want = _bm25(rows, range(N), words)
        if "OR" not in query:
            want = {i: v for i, v in want.items() if all(w in rows[i]["caption"].split() for w in words)}
        s, ids = idx.keyword_search(query, 50)
        got = dict(zip(ids[0].tolist(), s[0].tolist()))
        best = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
        assert [i for i, _ in best] == ids[0].tolist(), query
        np.testing.assert_allclose([got[i] for i, _ in best], [v for _, v in best], rtol=1e-4)


def test_matches_follow_deletes_appends_where_and_compaction(corpus, tmp_path):
    import shutil

    folder, rows = corpus
    work = tmp_path / "w"
    shutil.copytree(folder, work)
    want = sorted(_with(rows, RARE))
    idx = open_index(work)
    idx.delete([f"k{want[0]}", f"k{want[1]}"])
    new = [{"key": f"new{i}", "image_path": "", "caption": f"a {RARE} at the end {i}", "title": "t"} for i in range(3)]
    add_embeddings(work, unit_vectors(3, D, 5), unit_vectors(3, D, 6), new)
    idx.refresh()
    ids = idx.keyword_search(RARE, 100)[1][0]
    keys = {r["key"] for r in idx.metadata(ids[ids >= 0])}
    expect = {f"k{i}" for i in want[2:]} | {r["key"] for r in new}
    assert keys == expect
    ids = idx.keyword_search(RARE, 100, where="title = 't'")[1][0]
    assert {r["key"] for r in idx.metadata(ids[ids >= 0])} == {r["key"] for r in new}
    compact(work, threshold=0.0, min_rows=10_000)                  # every shard rewritten: new files, new ids
    idx = open_index(work)
    ids = idx.keyword_search(RARE, 100)[1][0]
    assert {r["key"] for r in idx.metadata(ids[ids >= 0])} == expect
    assert CliRunner().invoke(main, ["verify", str(work)]).exit_code == 0


def test_a_shard_without_text_holds_no_documents_but_counts_its_rows(corpus, tmp_path):
    """Rows appended without any text: their shard's full-text index is empty (nothing to write a
    document for), the folder verifies, and BM25's N still counts them, so scores are what the same
    rows as empty documents gave."""
    import shutil

    from retrieval.store.fts import fts_rows
    from retrieval.store.manifest import load_manifest

    folder, rows = corpus
    work = tmp_path / "w"
    shutil.copytree(folder, work)
    add_embeddings(work, unit_vectors(500, D, 7), unit_vectors(500, D, 8),
                   [{"key": f"bare{i}", "image_path": "", "caption": None, "title": None} for i in range(500)])
    new = load_manifest(work)["shards"][-1]
    assert new["rows"] == 500 and new["fts"]["docs"] == 0 and fts_rows(work / new["fts"]["dir"]) == 0
    assert CliRunner().invoke(main, ["verify", str(work)]).exit_code == 0
    idx = open_index(work)
    want = _bm25(rows, range(N), ["beach", "snow"], textless=500)
    s, ids = idx.keyword_search("beach OR snow", 20)
    best = sorted(want.values(), reverse=True)[:20]                       # (float32 near-ties may swap ids)
    np.testing.assert_allclose(s[0], best, rtol=1e-4)
    np.testing.assert_allclose(s[0], [want[i] for i in ids[0].tolist()], rtol=1e-4)
    bare = tmp_path / "bare"
    build_from_embeddings(bare, unit_vectors(300, D, 1), unit_vectors(300, D, 2), {"arch": "synthetic"},
                          index_key="IVF8,Flat")
    m = load_manifest(bare)
    assert [s["fts"]["docs"] for s in m["shards"]] == [0] and fts_rows(bare / m["shards"][0]["fts"]["dir"]) == 0
    assert CliRunner().invoke(main, ["verify", str(bare)]).exit_code == 0
    assert (open_index(bare).keyword_search("photo", 5)[1] < 0).all()


def test_text_columns_are_searched_too(tmp_path):
    rows = [{"key": f"k{i}", "image_path": "", "caption": "a photo", "title": f"sku{i}"} for i in range(50)]
    build_from_embeddings(tmp_path / "a", unit_vectors(50, D, 1), unit_vectors(50, D, 2), {"arch": "synthetic"}, rows)
    assert (open_index(tmp_path / "a").keyword_search("sku7", 5)[1] < 0).all()        # captions only by default
    from retrieval.ops.fulltext import add_fulltext
    from retrieval.store.manifest import require_manifest

    m = json.loads((tmp_path / "a" / "manifest.json").read_text())          # a folder from before keyword search
    for s in m["shards"]:
        s.pop("fts")
    m["build"].pop("fts")
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="retrieval migrate"):
        open_index(tmp_path / "a").keyword_search("photo", 3)
    assert add_fulltext(tmp_path / "a", ["caption", "title"]).shards == 1
    assert require_manifest(tmp_path / "a")["build"]["text_columns"] == ["caption", "title"]
    assert open_index(tmp_path / "a").keyword_search("sku7", 5)[1][0].tolist()[:2] == [7, -1]


def _near(q, n, spread, seed):
    x = q + spread * np.random.default_rng(seed).standard_normal((n, len(q))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def hybrid_folder(tmp_path_factory):
    """A query vector q; 40 rows close to it (borderline CLIP hits, generic captions); 5 rows farther
    away whose captions literally hold the query's words; 500 unrelated rows."""
    q = unit_vectors(1, D, 9)[0]
    x = np.concatenate([_near(q, 40, 0.3, 1), _near(q, 5, 1.2, 2), unit_vectors(500, D, 3)])
    captions = ["a photo of something"] * 40 + [f"the eiffel tower at dusk {i}" for i in range(5)] + ["other"] * 500
    rows = [{"key": f"k{i}", "image_path": "", "caption": c, "group": i // 40} for i, c in enumerate(captions)]
    out = tmp_path_factory.mktemp("hy") / "idx"
    build_from_embeddings(out, x, x, {"arch": "synthetic"}, rows, shard_size=200)
    return out, q


@pytest.mark.parametrize("rerank", ["clip", "nnn", "bsap"])
def test_hybrid_puts_literal_matches_above_borderline_clip_hits(hybrid_folder, rerank):
    folder, q = hybrid_folder
    idx = open_index(folder)
    plain = idx.search(q[None], 10, rerank=rerank)[1][0]
    assert not set(range(40, 45)) & set(plain.tolist())                     # CLIP alone misses them
    fused = idx.search(q[None], 10, rerank=rerank, text_match="eiffel tower")[1][0]
    assert set(fused[:10].tolist()) >= set(range(40, 45))                   # the literal matches are in
    assert set(fused[:2].tolist()) & set(range(40, 45))                     # and near the top
    w = idx.search(q[None], 10, rerank=rerank, text_match="eiffel tower", fusion="weighted", keyword_weight=0.9)[1][0]
    assert set(w[:5].tolist()) == set(range(40, 45))


def test_hybrid_returns_k_whenever_k_qualify(hybrid_folder):
    folder, q = hybrid_folder
    idx = open_index(folder)
    for k in (3, 10, 60, 545):
        s, ids = idx.search(q[None], k, text_match="eiffel")
        assert (ids >= 0).all() and len(set(ids[0].tolist())) == k
    s, ids = idx.search(q[None], 50, text_match="eiffel", where="\"group\" = 1")
    assert sorted(ids[0][ids[0] >= 0].tolist()) == list(range(40, 80))      # all 40 rows the filter allows
    s, ids = idx.search(q[None], 20, text_match="eiffel", dedup=0.999)
    assert (ids >= 0).all()


def test_fusion_functions():
    a = (np.array([0.9, 0.8, 0.7]), np.array([1, 2, 3]))
    b = (np.array([5.0, 1.0, -np.inf]), np.array([3, 4, -1]))
    s, ids = rrf([a, b])
    assert ids.tolist() == [3, 1, 2, 4] and s[0] == pytest.approx(1 / 63 + 1 / 61)
    s, ids = weighted([a, b], [0.5, 0.5])          # min-max: a -> 1, .5, 0; b -> 1, 0 (ties: the smaller id)
    assert ids.tolist() == [1, 3, 2, 4] and s.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0])
    s, ids = weighted([a, b], [0.2, 0.8])
    assert ids.tolist() == [3, 1, 2, 4]


@pytest.mark.parametrize("query,msg", [('"open', "quote is not closed"), ("a OR", "expected before the end"),
                                       ("(a", "not closed"), (")", "expected before"), ("a )", "closes nothing"),
                                       ("NOT a", "expected before 'NOT'"), ("", "empty"), ("-- !!", "no words"),
                                       ("x" * 2001, "at most 2000")])
def test_bad_keyword_queries_are_one_line_errors(corpus, query, msg):
    with pytest.raises(KeywordError, match=msg):
        open_index(corpus[0]).keyword_search(query, 3)
    r = CliRunner().invoke(main, ["search", str(corpus[0]), "--text-match", query])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_the_query_subset_is_parsed_into_a_tree_not_a_query_string():
    node = parse('caption:dog NEAR(a b) "on the beach" bicyc* NOT cat OR {x} ^2')
    kinds = []

    def walk(n):
        kinds.append((n.kind, n.text))
        for c in n.children:
            walk(c)

    walk(node)
    assert ("words", "caption:dog") in kinds and ("words", "NEAR") in kinds and ("prefix", "bicyc") in kinds
    assert ("words", "on the beach") in kinds and ("not", "") in kinds and node.kind == "or"


def test_cli_keyword_and_hybrid(corpus):
    folder, rows = corpus
    r = CliRunner().invoke(main, ["search", str(folder), "--text-match", RARE, "--k", "20", "--json"])
    assert r.exit_code == 0, r.output
    assert {json.loads(x)["key"] for x in r.output.splitlines()} == {f"k{i}" for i in _with(rows, RARE)}
    r = CliRunner().invoke(main, ["search", str(folder), "a dog", "--text-match", "dog"])
    assert r.exit_code == 2 and "needs hybrid" in r.output


def test_unknown_text_columns_are_a_usage_error(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("image,caption,title\na.jpg,a photo,t\n")
    r = CliRunner().invoke(main, ["build", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
                                  "--text-columns", "title,nope"])
    assert r.exit_code == 2 and "no metadata column 'nope' for keyword search" in r.output, r.output
    assert not (tmp_path / "o").exists()
