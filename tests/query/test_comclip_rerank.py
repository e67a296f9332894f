"""``rerank="comclip"`` end to end on the Flickr fixture (tiny model): the score equals a direct numpy
computation from given boxes and parses; results are CLIP's candidates under where/deletes/dedup;
captions without parts keep CLIP's order; unreadable images keep their CLIP score (logged); what
cannot run says so in one line (Python, CLI, HTTP)."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from retrieval import open_index
from retrieval.cli import main
from retrieval.corpus.subimages import black_outside, overlay
from retrieval.embed import Encoder
from retrieval.methods.parse import from_json
from retrieval.query.comclip import ComclipOptions
from tests.conftest import FLICKR, unit_vectors

pytest.importorskip("textblob")
pytest.importorskip("cv2")
TEXT = "a dog chasing a man"
PARSE = {"objects": {"dog": {"attributes": "brown"}, "man": {"attributes": None}},
         "connections": [{"subject": "dog", "verb": "chasing", "object": "man"}]}


@pytest.fixture(scope="module")
def idx(flickr_index, tiny_clip):
    return open_index(flickr_index, tiny_clip)


def _boxes(w, h):
    return [(0, 0, w // 2, h), (w // 2, 0, w, h), (w // 4, h // 4, 3 * w // 4, 3 * h // 4)]


def _direct(idx, clip, image_path, text, parts, rel):
    """ComCLIP's score by hand: raw embeddings, best-box grounding against the whole image, the overlay
    for the predicate, w = s / sum s, cos(g + sum w e, t)."""
    enc = Encoder(clip)
    im = Image.open(FLICKR / "images" / image_path).convert("RGB")
    boxes = _boxes(*im.size)
    x = enc.images(torch.stack([clip.preprocess(i) for i in [im] + [black_outside(im, b) for b in boxes]]), False)
    g, b = x[0].astype(np.float64), x[1:].astype(np.float64)
    u = enc.texts(parts, normalise=False).astype(np.float64)
    t = enc.texts([text]).astype(np.float64)[0]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    picked = []
    for ue in u[:2]:
        sims = unit(b) @ unit(ue)
        picked.append(int(sims.argmax()) if sims.max() > unit(g) @ unit(ue) else -1)
    ent = [b[j] if j >= 0 else g for j in picked]
    s_j, o_j = picked[rel[0]], picked[rel[1]]
    if min(s_j, o_j) < 0:
        pred = g
    elif s_j == o_j:
        pred = b[s_j]
    else:
        img = overlay([black_outside(im, boxes[o_j]), black_outside(im, boxes[s_j])])
        pred = enc.images(torch.stack([clip.preprocess(img)]), False)[0].astype(np.float64)
    sub = np.stack(ent + [pred])
    s = np.array([uk @ ek for uk, ek in zip(u, sub)])
    v = g + (s / s.sum()) @ sub
    return float(unit(v) @ unit(t))


def test_the_score_is_the_formula_on_given_boxes_and_parse(idx, tiny_clip):
    rows = idx.metadata(np.arange(len(idx)))
    regions = {r["key"]: _boxes(*Image.open(FLICKR / "images" / r["image_path"]).size) for r in rows}
    opts = ComclipOptions(parses={TEXT: from_json(PARSE)}, regions=regions)
    got = idx.query(TEXT, k=10, rerank="comclip", comclip=opts)[0]
    clip_top = {r["id"] for r in idx.query(TEXT, k=10)[0]}
    assert {r["id"] for r in got} == clip_top and len(got) == 10
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    for r in got[:4]:
        want = _direct(idx, tiny_clip, r["image_path"], TEXT, ["brown dog", "man", "chasing"], (0, 1))
        assert r["score"] == pytest.approx(want, abs=2e-5)


def test_softmax_weighting_and_candidates(idx):
    a = idx.query(TEXT, k=3, rerank="comclip", candidates=20)[0]
    b = idx.query(TEXT, k=3, rerank="comclip", candidates=20, comclip=ComclipOptions("softmax", 0.01))[0]
    clip20 = {r["id"] for r in idx.query(TEXT, k=20)[0]}
    assert len(a) == len(b) == 3 and {r["id"] for r in a + b} <= clip20
    assert [r["score"] for r in a] != [r["score"] for r in b]


def test_where_deletes_and_dedup(idx, flickr_index, tiny_clip, tmp_path):
    where = "image_path LIKE '1%'"
    got = idx.query(TEXT, k=5, rerank="comclip", where=where)[0]
    assert len(got) == 5 and all(r["image_path"].startswith("1") for r in got)
    assert {r["id"] for r in got} <= {r["id"] for r in idx.query(TEXT, k=10, where=where)[0]}
    copy = tmp_path / "idx"
    shutil.copytree(flickr_index, copy)
    mine = open_index(copy, tiny_clip)
    first = mine.query(TEXT, k=3, rerank="comclip")[0]
    mine.delete([first[0]["key"]])
    after = mine.query(TEXT, k=3, rerank="comclip")[0]
    assert first[0]["id"] not in {r["id"] for r in after} and len(after) == 3
    deduped = idx.query(TEXT, k=5, rerank="comclip", dedup=0.9)[0]
    v = idx.embeddings([r["id"] for r in deduped])
    assert len(deduped) == 5 and (np.triu(v @ v.T, 1) < 0.9).all()


def test_a_caption_without_parts_keeps_clips_order(idx):
    clip = idx.query("running quickly", k=5)[0]
    com = idx.query("running quickly", k=5, rerank="comclip")[0]
    assert [(r["id"], r["score"]) for r in com] == [(r["id"], pytest.approx(r["score"], abs=1e-6)) for r in clip]


def test_an_unreadable_image_keeps_its_clip_score(tmp_path, tiny_clip, caplog):
    from retrieval import build_index

    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted((FLICKR / "images").iterdir())[:12]:
        shutil.copy(p, src / p.name)
    build_index(src, tmp_path / "idx", clip=tiny_clip, progress=False, workers=0)
    folder_idx = open_index(tmp_path / "idx", tiny_clip)
    plain = folder_idx.query(TEXT, k=12)[0]
    gone = plain[0]
    (src / gone["image_path"]).unlink()
    with caplog.at_level(logging.WARNING):
        got = {r["key"]: r["score"] for r in folder_idx.query(TEXT, k=12, rerank="comclip", candidates=12)[0]}
    assert got[gone["key"]] == pytest.approx(gone["score"], abs=1e-6) and len(got) == 12
    assert any(gone["key"] in m and "CLIP score" in m for m in caplog.messages)


@pytest.fixture(scope="module")
def embeddings_index(tmp_path_factory):
    from retrieval import build_from_embeddings

    out = tmp_path_factory.mktemp("emb") / "idx"
    build_from_embeddings(out, unit_vectors(50, 16, 1), unit_vectors(50, 16, 2), {"arch": "synthetic"})
    return out


def test_what_cannot_run_says_so(idx, embeddings_index):
    emb = open_index(embeddings_index)
    with pytest.raises(ValueError, match="has none: it was built from embeddings"):
        emb.query(TEXT, rerank="comclip")
    with pytest.raises(ValueError, match="query's text"):
        idx.search(unit_vectors(1, idx.dim, 0), rerank="comclip")
    for bad in ({"image": str(next((FLICKR / "images").iterdir()))}, {"text": TEXT, "min_score": "auto"},
                {"text": TEXT, "target": "text"}, {"text": TEXT, "hybrid": True}, {"text": TEXT, "candidates": 33},
                {"text": TEXT, "k": 40}):
        with pytest.raises(ValueError, match="comclip"):
            idx.query(**bad, rerank="comclip")
    with pytest.raises(ValueError, match="weighting"):
        idx.query(TEXT, rerank="comclip", comclip=ComclipOptions("max"))


def test_cli(flickr_index, embeddings_index, tmp_path):
    r = CliRunner().invoke(main, ["search", str(flickr_index), TEXT, "--rerank", "comclip", "--k", "3", "--json",
                                  "--weighting", "softmax", "--max-boxes", "4"])
    assert r.exit_code == 0, r.output
    assert len([json.loads(x) for x in r.output.splitlines()]) == 3
    parses = tmp_path / "parses.json"
    parses.write_text(json.dumps({TEXT: json.dumps(PARSE)}))          # as ComCLIP's scripts save them
    r = CliRunner().invoke(main, ["search", str(flickr_index), TEXT, "--rerank", "comclip", "--parses", str(parses)])
    assert r.exit_code == 0, r.output
    parses.write_text("{")
    r = CliRunner().invoke(main, ["search", str(flickr_index), TEXT, "--rerank", "comclip", "--parses", str(parses)])
    assert r.exit_code == 2 and "not JSON" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["search", str(embeddings_index), "--rerank", "comclip", TEXT])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_http(idx, flickr_index, tiny_clip, tmp_path):
    from starlette.testclient import TestClient

    from retrieval import create_app

    blind = tmp_path / "blind"                    # as an import without --image-root: no image files
    shutil.copytree(flickr_index, blind)
    m = json.loads((blind / "manifest.json").read_text())
    m["corpus"] = {"type": "clip-retrieval", "path": "x", "image_root": None}
    (blind / "manifest.json").write_text(json.dumps(m))
    c = TestClient(create_app({"flk": idx, "emb": open_index(blind, tiny_clip)}))
    assert "comclip" in c.get("/indexes").json()[0]["rerank"]
    r = c.post("/search", json={"text": TEXT, "rerank": "comclip", "k": 4, "parse": PARSE, "weighting": "softmax"})
    assert r.status_code == 200 and len(r.json()["results"]) == 4
    assert c.post("/search", json={"text": TEXT, "rerank": "comclip", "parse": {"objects": [1]}}).status_code == 422
    assert c.post("/search", json={"embedding": [0.1] * idx.dim, "rerank": "comclip"}).status_code == 422
    assert c.post("/search", json={"text": TEXT, "rerank": "comclip", "temperature": 0}).status_code == 422
    assert c.post("/search", json={"text": TEXT, "rerank": "comclip", "candidates": 5000}).status_code == 422
    r = c.post("/search", json={"index": "emb", "text": TEXT, "rerank": "comclip"})
    assert r.status_code == 409 and "detail" in r.json()


def test_without_the_extra_it_says_what_to_install(idx, monkeypatch):
    import importlib.util

    from retrieval.errors import UsageError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'retrieval\[comclip\]'"):
        idx.query(TEXT, rerank="comclip")
