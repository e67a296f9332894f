"""The HTTP service through a real uvicorn server on loopback: every endpoint and error case."""
import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import FLICKR, SHARED, make_image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
MAX_BODY = 1 << 20
CAT = SHARED / "data" / "cifar10_test_1k" / "cat" / "0000.jpg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, as `retrieval serve` runs it."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        assert self.server.started, "server did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(flickr_index, tiny_clip):
    from retrieval import open_index
    from retrieval import create_app

    srv = Server(create_app({"flk": open_index(flickr_index, tiny_clip)}, max_wait_ms=5.0, max_body=MAX_BODY))
    yield srv
    srv.stop()
    assert not srv.thread.is_alive()                                   # clean shutdown
    assert not srv.app.state.service.batcher._thread.is_alive()        # batcher stopped with it


def call(srv, method, path, body=None, data=None, headers=None, raw=False):
    h = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(srv.url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            payload = r.read()
            return r.status, (payload if raw else json.loads(payload)), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def multipart(fields: dict, file_bytes: bytes, filename="q.jpg"):
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + file_bytes + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}


def test_health_indexes_page_and_docs(server):
    assert call(server, "GET", "/health")[1]["status"] == "ok"
    st, body, _ = call(server, "GET", "/indexes")
    assert st == 200 and body[0]["name"] == "flk" and body[0]["rows"] == 1000 and "nnn" in body[0]["rerank"]
    st, page, _ = call(server, "GET", "/", raw=True)
    assert st == 200 and b'id="search-form"' in page and b"https://" not in page   # no external CDN
    st, docs, _ = call(server, "GET", "/docs", raw=True)
    assert st == 200 and b"/openapi.json" in docs and b"https://" not in docs
    spec = call(server, "GET", "/openapi.json")[1]
    assert {"/search", "/search/upload", "/classify", "/items/{index}/{item_id}/image"} <= set(spec["paths"])


def test_search_text_image_embedding_item(server, flickr_index, tiny_clip):
    st, body, _ = call(server, "POST", "/search", {"text": "a dog running on the grass", "k": 5})
    rows = body["results"]
    assert st == 200 and len(rows) == 5 and all({"id", "score", "caption", "image_url", "key"} <= set(r) for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    # the same query in-process gives the same ids
    from retrieval import open_index

    want = open_index(flickr_index, tiny_clip).query(text="a dog running on the grass", k=5)[0]
    assert [r["id"] for r in rows] == [r["id"] for r in want]
    emb = open_index(flickr_index, tiny_clip).embeddings([7], "image")[0].tolist()
    st, body, _ = call(server, "POST", "/search", {"embedding": emb, "k": 3, "return_embeddings": True})
    assert st == 200 and body["results"][0]["id"] == 7 and len(body["results"][0]["embedding"]) == len(emb)
    st, body, _ = call(server, "POST", "/search", {"item_id": 7, "k": 3, "rerank": "nnn"})
    assert st == 200 and len(body["results"]) == 3
    b64 = base64.b64encode(CAT.read_bytes()).decode()
    st, body, _ = call(server, "POST", "/search", {"image_base64": "data:image/jpeg;base64," + b64, "k": 4})
    assert st == 200 and len(body["results"]) == 4
    data, headers = multipart({"k": "4", "rerank": "bsap"}, CAT.read_bytes())
    st, up, _ = call(server, "POST", "/search/upload", data=data, headers=headers)
    assert st == 200 and len(up["results"]) == 4 and up["rerank"] == "bsap"
    for m in ("clip", "bsap", "hybrid", "nnn"):
        st, body, _ = call(server, "POST", "/search", {"text": "two children in a pool", "k": 3, "rerank": m,
                                                      "target": "text"})
        assert st == 200 and len(body["results"]) == 3, (m, body)
    st, body, _ = call(server, "POST", "/search", {"text": "a dog", "k": 10000})   # k above the corpus
    assert st == 200 and len(body["results"]) == 1000


def test_item_image_serves_only_index_files(server):
    st, data, headers = call(server, "GET", "/items/flk/0/image", raw=True)
    assert st == 200 and headers["content-type"] == "image/jpeg" and data[:2] == b"\xff\xd8"
    meta = call(server, "POST", "/search", {"item_id": 0, "k": 1})[1]["results"][0]
    assert data == (FLICKR / "images" / meta["image_path"]).read_bytes()
    assert call(server, "GET", "/items/flk/1000/image")[0] == 404
    assert call(server, "GET", "/items/nope/0/image")[0] == 404
    assert call(server, "GET", "/items/flk/..%2F..%2Fetc%2Fpasswd/image")[0] in (404, 405, 422)
    assert call(server, "GET", "/items/flk/-1/image")[0] == 422
    assert call(server, "GET", f"/items/flk/{2**70}/image")[0] == 422


def test_item_image_refuses_paths_outside_the_corpus(tmp_path):
    from retrieval.corpus.items import ItemImageError, item_image

    make_image(tmp_path / "root" / "a.png")
    (tmp_path / "secret.png").write_bytes((tmp_path / "root" / "a.png").read_bytes())
    corpus = {"type": "folder", "path": str(tmp_path / "root")}
    assert item_image(corpus, "a.png")[1] == "image/png"
    with pytest.raises(ItemImageError, match="outside this index's image roots"):
        item_image(corpus, "../secret.png")
    with pytest.raises(ItemImageError, match="missing"):
        item_image(corpus, "b.png")


@pytest.mark.parametrize("body,status,text", [
    ({"image_base64": "!!not base64", "k": 3}, 400, "not valid base64"),
    ({"image_base64": base64.b64encode(b"hello, not an image").decode()}, 400, "not a readable image"),
    ({"text": "a dog", "k": 0}, 422, "greater than or equal"),
    ({"text": "a dog", "k": 10001}, 422, "less than or equal"),
    ({"text": "   "}, 422, "text is empty"),
    ({"text": "a dog", "embedding": [0.1]}, 422, "exactly one"),
    ({"embedding": [0.1, 0.2]}, 422, "finite numbers"),
    ({"text": "a dog", "rerank": "magic"}, 422, "clip"),
    ({"text": "a dog", "index": "nope"}, 404, "unknown index"),
    ({"item_id": 5000}, 404, "no item"),
])
def test_search_errors_are_clear_4xx_json(server, body, status, text):
    st, out, headers = call(server, "POST", "/search", body)
    assert st == status and headers["content-type"].startswith("application/json")
    assert text in json.dumps(out["detail"]), out


def test_payload_over_the_limit_is_413(server):
    st, out, _ = call(server, "POST", "/search", {"image_base64": "A" * (MAX_BODY + 10)})
    assert st == 413 and "over" in out["detail"]
    data, headers = multipart({"k": "3"}, b"\0" * (MAX_BODY + 10))
    assert call(server, "POST", "/search/upload", data=data, headers=headers)[0] == 413
    data, headers = multipart({"k": "3"}, b"")
    assert call(server, "POST", "/search/upload", data=data, headers=headers)[0] == 400


def test_classify_endpoint(server):
    b64 = base64.b64encode(CAT.read_bytes()).decode()
    st, body, _ = call(server, "POST", "/classify", {"images_base64": [b64], "classes": ["cat", "dog", "ship"],
                                                      "neighbours": 32})
    r = body["results"][0]
    assert st == 200 and r["label"] in ("cat", "dog", "ship") and len(r["image_top3"]) == 3 and len(r["neighbours"]) == 16
    assert call(server, "POST", "/classify", {"images_base64": [b64], "classes": ["cat", "cat"]})[0] == 422
    assert call(server, "POST", "/classify", {"images_base64": [b64], "classes": ["cat"]})[0] == 422
    assert call(server, "POST", "/classify", {"images_base64": ["@@"], "classes": ["cat", "dog"]})[0] == 400
    st, out, _ = call(server, "POST", "/classify", {"images_base64": [b64], "classes": ["a", "b"], "templates": ["x"]})
    assert st == 422 and "{}" in out["detail"]


def test_concurrent_clients_are_micro_batched_without_errors(server):
    """Bounded load test: 16 concurrent clients x 8 requests on loopback, mixed kinds, 0 errors."""
    svc = server.app.state.service
    b0, i0 = svc.batcher.batches, svc.batcher.items
    texts = ["a dog", "a man on a bike", "children playing", "a snowy mountain", "a red car", "people walking"]

    def client(c):
        errors = 0
        for j in range(8):
            body = {"text": texts[(c + j) % len(texts)], "k": 5 + j, "rerank": ("clip", "nnn")[j % 2]}
            if j == 3:
                body = {"item_id": c, "k": 5}
            st, out, _ = call(server, "POST", "/search", body)
            errors += st != 200 or len(out["results"]) != body["k"]
        return errors

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(client, range(16))) == 0
    items, batches = svc.batcher.items - i0, svc.batcher.batches - b0
    assert items == 128 and batches < items          # requests shared forwards and searches


def test_a_failing_request_does_not_fail_its_batch():
    import asyncio

    from retrieval.serve.batching import MicroBatcher

    def fn(items):
        if any(x < 0 for x in items):
            raise ValueError("negative")
        time.sleep(0.01)
        return [x * 2 for x in items]

    b = MicroBatcher(fn, max_batch=8, max_wait_ms=20)

    async def run():
        return await asyncio.gather(*(b.submit(x) for x in [1, 2, -3, 4]), return_exceptions=True)

    out = asyncio.run(run())
    b.close()
    assert out[:2] == [2, 4] and out[3] == 8 and isinstance(out[2], ValueError)
    assert b.batches >= 1 and not b._thread.is_alive()


def test_a_slow_client_does_not_block_others(server):
    """A client that sends half a request and stalls; meanwhile other requests are served promptly."""
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        body = json.dumps({"text": "a dog", "k": 3}).encode()
        slow.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        t = time.perf_counter()
        for _ in range(5):
            assert call(server, "POST", "/search", {"text": "a man on a bike", "k": 3})[0] == 200
        assert time.perf_counter() - t < 10
        slow.sendall(body[5:])                                   # the slow one still completes
        assert b"200 OK" in slow.recv(65536).split(b"\r\n")[0]
    finally:
        slow.close()


def test_a_bias_file_corrupted_while_serving_is_a_503_naming_it(flickr_index, tiny_clip, tmp_path):
    import shutil

    from starlette.testclient import TestClient

    from retrieval import create_app, open_index
    from tests.conftest import bias_folder

    folder = tmp_path / "copy"
    shutil.copytree(flickr_index, folder)
    client = TestClient(create_app({"flk": open_index(folder, tiny_clip)}))  # opened (and checked) while intact
    target = bias_folder(folder) / "nnn_image_0001.npy"
    target.write_bytes(target.read_bytes()[:60])
    r = client.post("/search", json={"text": "a dog", "rerank": "nnn"})
    assert r.status_code == 503 and "nnn_image_0001.npy is unreadable" in r.json()["detail"]
    r = client.post("/search", json={"text": "a dog"})  # what does not need the file still works
    assert r.status_code == 200 and len(r.json()["results"]) == 10


def test_keyword_and_hybrid_search_over_http(server):
    import re

    st, body, _ = call(server, "POST", "/search", {"text_match": "frisbee", "k": 8})
    assert st == 200 and len(body["results"]) == 8
    for r in body["results"]:                              # every row holds the word in one of its captions
        assert any("frisbee" in re.findall(r"\w+", c.lower()) for c in r["captions"])
    assert body["results"][0]["score"] >= body["results"][-1]["score"] > 0
    st, hy, _ = call(server, "POST", "/search", {"text": "a dog catches a frisbee", "hybrid": True, "k": 10})
    assert st == 200 and len(hy["results"]) == 10
    st, hy2, _ = call(server, "POST", "/search", {"text": "a dog", "text_match": "frisbee", "hybrid": True, "k": 10,
                                                  "rerank": "nnn", "fusion": "weighted", "keyword_weight": 0.7,
                                                  "where": "caption LIKE '%dog%'"})
    assert st == 200 and all("dog" in r["caption"] for r in hy2["results"])
    for bad in ({"text_match": '"unclosed'}, {"text_match": "a OR"}, {"text": "dog", "text_match": "dog"},
                {"text_match": "dog", "hybrid": True}, {"text": "dog", "hybrid": True, "fusion": "max"},
                {"text": "dog", "hybrid": True, "keyword_weight": 1.5}, {"text_match": " "}):
        st, err, _ = call(server, "POST", "/search", bad)
        assert st == 422 and "detail" in err, (bad, st, err)


def test_example_queries_and_relevance_floor_over_http(server):
    st, one, _ = call(server, "POST", "/search", {"item_id": 3, "k": 6})
    key = next(r["key"] for r in one["results"] if r["id"] == 3)
    b64 = base64.b64encode(CAT.read_bytes()).decode()
    st, body, _ = call(server, "POST", "/search", {"positive": [{"key": key}, {"id": 10}, {"text": "a dog"},
                                                                {"image_base64": b64}], "negative": [{"id": 11}],
                                                   "k": 8, "rerank": "nnn"})
    assert st == 200 and len(body["results"]) == 8, body
    assert not {3, 10, 11} & {r["id"] for r in body["results"]}             # the examples never come back
    for strategy in ("best_score", "sum_scores"):
        st, body, _ = call(server, "POST", "/search", {"positive": [{"id": 3}], "negative": [{"id": 11}],
                                                       "strategy": strategy, "k": 5})
        assert st == 200 and len(body["results"]) == 5 and 3 not in {r["id"] for r in body["results"]}
    st, body, _ = call(server, "POST", "/search", {"text": "a dog runs", "negative": [{"text": "water"}], "k": 5})
    assert st == 200 and len(body["results"]) == 5
    st, floor, _ = call(server, "POST", "/search", {"text": "a dog runs on the grass", "k": 1000, "min_score": "auto"})
    assert st == 200 and 0 < len(floor["results"]) < 1000
    st, body, _ = call(server, "POST", "/search", {"text": "a dog runs on the grass", "k": 1000,
                                                   "min_score": floor["results"][-1]["score"]})
    assert st == 200 and len(body["results"]) == len(floor["results"])
    for bad in ({"positive": [{"key": "nope"}]}, {"positive": [{"id": 3, "text": "x"}]}, {"negative": [{"id": 3}]},
                {"positive": [{"id": 3}], "strategy": "best_score", "rerank": "nnn"},
                {"text": "x", "min_score": "high"}, {"embedding": [0.1] * 256, "min_score": "auto"},
                {"positive": [{"id": 2**70}]}, {"positive": []}):
        st, err, _ = call(server, "POST", "/search", bad)
        assert st in (404, 422) and "detail" in err, (bad, st, err)


def test_an_image_query_with_negative_examples(server):
    b64 = base64.b64encode(CAT.read_bytes()).decode()
    st, plain, _ = call(server, "POST", "/search", {"image_base64": b64, "k": 5})
    st, body, _ = call(server, "POST", "/search", {"image_base64": b64, "negative": [{"id": plain["results"][0]["id"]}],
                                                   "k": 5})
    assert st == 200 and plain["results"][0]["id"] not in {r["id"] for r in body["results"]}
