"""`retrieval serve`'s start (``serve.startup``): text queries are answered from the cached text tower
while the full model loads in the background; requests that need the full model wait for it and get
what a server started on the full model answers; a failed load refuses them with a 503 naming why
and keeps text queries going; without a cached tower the full model loads first and its tower is
cached."""
import base64
import threading
import time

import pytest

from tests.conftest import SHARED

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from retrieval import create_app, open_index  # noqa: E402
from retrieval.embed.text_cache import TextTower, load_text_tower, save_text_tower  # noqa: E402
from retrieval.serve.startup import attach_models  # noqa: E402

CAT = SHARED / "data" / "cifar10_test_1k" / "cat" / "0000.jpg"
TEXT = {"text": "a dog runs through the grass", "k": 8}


@pytest.fixture
def cached(monkeypatch, tmp_path, tiny_clip):
    """The tiny model's text tower cached in a fresh cache folder."""
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    assert save_text_tower(tiny_clip) is not None


def _image() -> dict:
    return {"image_base64": base64.b64encode(CAT.read_bytes()).decode(), "k": 8}


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def test_text_answers_while_the_full_model_loads_and_image_queries_wait(cached, flickr_index, tiny_clip):
    full = TestClient(create_app({"flk": open_index(flickr_index, tiny_clip)}))
    want_text, want_image = _ids(full.post("/search", json=TEXT)), _ids(full.post("/search", json=_image()))
    gate, loads = threading.Event(), []

    def load(identity, device):
        loads.append(identity["arch"])
        assert gate.wait(60)
        return tiny_clip

    idx = open_index(flickr_index, None)
    loading = attach_models({"flk": idx}, device="cpu", load=load)
    assert isinstance(idx.clip, TextTower) and loading.state() == "loading"
    with TestClient(create_app({"flk": idx}, models=loading)) as c:
        assert c.get("/health").json()["models"] == "loading"
        assert _ids(c.post("/search", json=TEXT)) == want_text        # answered before the full model exists
        got = {}
        waiting = threading.Thread(target=lambda: got.update(r=c.post("/search", json=_image())))
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and "r" not in got                   # the image query waits for the model
        gate.set()
        waiting.join(60)
        assert _ids(got["r"]) == want_image
        assert c.get("/health").json()["models"] == "ready" and idx.clip is tiny_clip and loads == [loads[0]]
        assert _ids(c.post("/search", json=TEXT)) == want_text


def test_a_failed_load_refuses_what_needs_the_model_and_serves_text(cached, flickr_index, tiny_clip, caplog):
    def load(identity, device):
        raise RuntimeError("weights file vanished")

    idx = open_index(flickr_index, None)
    loading = attach_models({"flk": idx}, device="cpu", load=load)
    loading.join(60)
    with TestClient(create_app({"flk": idx}, models=loading)) as c:
        assert c.get("/health").json()["models"] == "failed"
        for path, body in (("/search", _image()), ("/classify", {"images_base64": [_image()["image_base64"]],
                                                                 "classes": ["cat", "dog"]})):
            r = c.post(path, json=body)
            assert r.status_code == 503 and "weights file vanished" in r.json()["detail"], r.text
        assert len(_ids(c.post("/search", json=TEXT))) == 8
    assert "weights file vanished" in caplog.text


def test_without_a_cached_tower_the_full_model_loads_first_and_its_tower_is_cached(monkeypatch, tmp_path,
                                                                                   flickr_index, tiny_clip):
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    idx = open_index(flickr_index, None)
    assert load_text_tower(idx.manifest["model"]) is None
    loading = attach_models({"flk": idx, "again": open_index(flickr_index, None)}, device="cpu",
                            load=lambda identity, device: tiny_clip)
    assert idx.clip is tiny_clip and loading.state() == "ready" and loading.wait("flk", 0) is None
    loading.join(60)   # the tower is cached in the background
    assert isinstance(load_text_tower(idx.manifest["model"]), TextTower)   # the next start answers at once


def test_requests_waiting_for_the_model_hold_no_worker_thread(cached, flickr_index, tiny_clip):
    """More image queries than the server has worker threads (40) wait for the model on the event loop:
    a text query with a filter (which runs in a worker thread) is still answered at once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.serve.test_server import Server, call

    gate = threading.Event()
    idx = open_index(flickr_index, None)
    loading = attach_models({"flk": idx}, device="cpu", load=lambda identity, device: (gate.wait(60), tiny_clip)[1])
    srv = Server(create_app({"flk": idx}, models=loading))
    try:
        with ThreadPoolExecutor(48) as pool:
            waiting = [pool.submit(call, srv, "POST", "/search", _image()) for _ in range(45)]
            time.sleep(1.0)
            t = time.perf_counter()
            status, body, _ = call(srv, "POST", "/search", {**TEXT, "where": "caption LIKE '%dog%'"})
            assert status == 200 and body["results"] and time.perf_counter() - t < 10
            assert not any(f.done() for f in waiting)
            gate.set()
            assert [f.result(60)[0] for f in waiting] == [200] * 45
    finally:
        gate.set()
        srv.stop()
