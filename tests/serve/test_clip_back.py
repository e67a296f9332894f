"""clip-retrieval back's wire API on `retrieval serve`, driven by the real clients: the unmodified
``clip_client.py`` of the clip-retrieval 2.45.0 wheel (installed ``--no-deps`` by ``make setup``,
loaded by file path so its package ``__init__`` is not run) and its built web front in Chromium."""
import base64
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_shared
from tests.serve.test_server import CAT, Server

pytestmark = needs_shared
requests = pytest.importorskip("requests")


def _clip_client_module():
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        pytest.skip("clip-retrieval is not installed (make setup: pip install --no-deps clip-retrieval==2.45.0)")
    path = Path(spec.origin).parent / "clip_client.py"
    mod_spec = importlib.util.spec_from_file_location("clip_client_under_test", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def back(flickr_index, tiny_clip):
    from retrieval import create_app, open_index

    idx = open_index(flickr_index, tiny_clip)
    front = None
    if importlib.util.find_spec("clip_retrieval") is not None:
        from retrieval.serve.clipback import find_clip_front

        front = find_clip_front()
    srv = Server(create_app({"flk": idx}, max_wait_ms=5.0, clip_front=front))
    srv.idx = idx
    yield srv
    srv.stop()


def _post(url, body, **kw):
    return requests.post(url, data=body if isinstance(body, (bytes, str)) else json.dumps(body), timeout=60, **kw)


def test_clip_client_by_text_image_file_and_embedding_with_its_defaults(back):
    cc = _clip_client_module()
    client = cc.ClipClient(back.url + "/knn-service", "flk")  # deduplicate, safety, violence on; aesthetic 9
    idx = back.idx
    text = "a dog running on the grass"
    rows = client.query(text=text)
    assert len(rows) == 40
    assert all({"caption", "id", "similarity", "image_path", "key", "image"} <= set(r) for r in rows)
    sims = [r["similarity"] for r in rows]
    assert sims == sorted(sims, reverse=True)
    q = idx.encode_texts([text])
    s, ids = idx.search(q, 40, dedup=0.94)  # clip back's near-duplicate rule, in process
    assert [r["id"] for r in rows] == ids[0].tolist()
    np.testing.assert_allclose(sims, s[0], atol=1e-5)
    assert [r["caption"] for r in rows] == [m["caption"] for m in idx.metadata(ids[0])]
    raw = base64.b64decode(rows[0]["image"])  # the local file, for the front
    assert raw[:2] == b"\xff\xd8"

    by_image = client.query(image=str(CAT))
    assert len(by_image) == 40 and all("caption" in r for r in by_image)
    want = idx.search(idx.encode_images([str(CAT)]), 40, dedup=0.94)[1][0]
    assert [r["id"] for r in by_image] == want.tolist()

    emb = q[0] * 3.0  # clip back searches the vector as given: similarity is the raw inner product
    by_emb = client.query(embedding_input=emb.tolist())
    assert [r["id"] for r in by_emb] == ids[0].tolist()
    np.testing.assert_allclose([r["similarity"] for r in by_emb], 3 * s[0], atol=1e-4)

    meta = _post(back.url + "/metadata", {"ids": [r["id"] for r in rows[:10]], "indice_name": "flk"}).json()
    assert [m["id"] for m in meta] == [r["id"] for r in rows[:10]]
    for m, r in zip(meta, rows[:10]):
        assert m["metadata"] == {c: v for c, v in r.items() if c not in ("id", "similarity")}


def test_wire_details_of_knn_service(back):
    url = back.url
    base = {"text": "two people on a beach", "image": None, "image_url": None, "embedding_input": None,
            "deduplicate": False, "use_safety_model": True, "use_violence_detector": False, "indice_name": "flk",
            "use_mclip": False, "aesthetic_score": "", "aesthetic_weight": "", "modality": "image",
            "num_images": 5, "num_result_ids": 30}
    # the front's request: text/plain, a backend URL ending in '/' (hence '//knn-service')
    r = _post(url + "//knn-service", base, headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert r.headers["x-retrieval-ignored"] == "use_safety_model"
    rows = r.json()
    assert len(rows) == 30
    assert all("caption" in x for x in rows[:5]) and all(set(x) == {"id", "similarity"} for x in rows[5:])
    for score in (9, "9", ""):
        r = _post(url + "/knn-service", {**base, "aesthetic_score": score, "aesthetic_weight": 0.5})
        assert r.status_code == 200
        assert ("aesthetic_score" in r.headers.get("x-retrieval-ignored", "")) == (score != "")
    text_rows = _post(url + "/knn-service", {**base, "modality": "text"}).json()
    assert len(text_rows) == 30 and text_rows[0]["caption"]
    nnn = _post(url + "/knn-service", {**base, "rerank": "nnn"}).json()  # our extra field
    assert len(nnn) == 30 and [x["id"] for x in nnn] != [x["id"] for x in rows]
    where = _post(url + "/knn-service", {**base, "where": "caption LIKE '%beach%'"}).json()
    assert where and all("beach" in x["caption"] for x in where[:5])

    bad = [(b"{not json", "not JSON"), ({**base, "aesthetic_score": "nine"}, "aesthetic_score must be an integer"),
           ({**base, "num_result_ids": 10_001}, "num_result_ids must be in [1, 10000]"),
           ({**base, "num_images": -1}, "num_images must be in"),
           ({**base, "modality": "video"}, "modality must be"),
           ({**base, "text": None, "image_url": "http://169.254.169.254/x.jpg"}, "image_url is not fetched"),
           ({**base, "text": None, "image": "%%%"}, "not valid base64"),
           ({**base, "text": None, "image": base64.b64encode(b"not an image").decode()}, "not a readable image"),
           ({**base, "text": None, "embedding_input": [1.0, 2.0]}, "embedding_input must be"),
           ({**base, "text": ""}, "give one of text, image or embedding_input"),
           ({**base, "rerank": "magic"}, "rerank must be one of"),
           ({**base, "where": "no_such_column > 1"}, "no_such_column"),
           ([1, 2], "must be a JSON object")]
    for body, msg in bad:
        r = _post(url + "/knn-service", body)
        assert r.status_code == 400 and msg in r.json()["detail"], (body, r.text)
        assert r.headers["access-control-allow-origin"] == "*"
    r = _post(url + "/knn-service", {**base, "indice_name": "laion5B"})
    assert r.status_code == 404 and "unknown index" in r.json()["detail"]


def test_metadata_indices_and_config(back):
    url = back.url
    assert _post(url + "/metadata", {"ids": [], "indice_name": "flk"}).json() == []
    meta = _post(url + "//metadata", {"ids": [5, 3, 999_999], "indice_name": "flk"})
    assert meta.status_code == 200 and meta.headers["x-retrieval-missing-ids"] == "1"
    m = meta.json()
    assert [x["id"] for x in m] == [5, 3, 999_999] and m[2]["metadata"] == {}
    assert m[0]["metadata"]["key"] == back.idx.metadata([5])[0]["key"]
    for body in ({"ids": "5"}, {"ids": [1.5]}, {"ids": list(range(10_001))}):
        r = _post(url + "/metadata", body)
        assert r.status_code == 400 and "ids must be a list" in r.json()["detail"]
    assert requests.get(url + "/indices-list", timeout=10).json() == ["flk"]
    info = requests.get(url + "/indices-info", timeout=10).json()["flk"]
    assert info["rows"] == 1000 and "use_safety_model" in info["ignored_options"]
    cfg = requests.get(url + "/config.json", timeout=10).json()
    assert cfg == {"defaultBackend": url, "defaultIndex": "flk", "urlColumn": "url"}
    r = requests.options(url + "/knn-service", timeout=10)
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    # the lenient parsing stops at the read-only routes: a mutating route still wants its token and JSON
    r = _post(url + "/items/flk/delete", {"keys": ["x"]}, headers={"Content-Type": "text/plain"})
    assert r.status_code in (401, 403, 415, 422)


def test_their_front_served_by_us_runs_a_text_search_in_chromium(back):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serve.test_web_page import ARTIFACTS, _driver

    if importlib.util.find_spec("clip_retrieval") is None:
        pytest.skip("clip-retrieval is not installed")
    d = _driver()
    try:
        d.get(back.url + "/clip-front/")
        wait = WebDriverWait(d, 60)
        root = wait.until(lambda d: d.find_element(By.TAG_NAME, "clip-front").shadow_root)
        wait.until(lambda d: root.find_elements(By.ID, "searchBar"))
        bar = root.find_element(By.ID, "searchBar")
        bar.send_keys("a dog running on the grass")
        root.find_element(By.ID, "textSearch").click()

        def shown():
            return d.execute_script(
                "return [...arguments[0].querySelectorAll('img.pic')].filter(i => i.complete && i.naturalWidth > 0).length",
                root)

        wait.until(lambda d: shown() >= 10)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "clip_front_text_search.png"))
        captions = d.execute_script("return [...arguments[0].querySelectorAll('img.pic')].map(i => i.title)", root)
        assert sum(bool(c) for c in captions) >= 10
    finally:
        d.quit()
