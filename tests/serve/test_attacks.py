"""The adversarial pass's security cases against a real ``retrieval serve`` process: no file outside
the image roots is served (imported rows pointing at /etc/passwd and at the server's own write-token
file, a symlink leading out, a text file named .jpg, a FIFO), the ``where`` and template bombs are
refused at once without growing the server, and hostile JSON (deep nesting, huge integers) is a 4xx."""
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.clip_retrieval_layout import write_inference_folder
from tests.conftest import TINY, make_image, needs_shared

pytestmark = needs_shared
N = 40


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method="GET", body=None, raw_body=None, timeout=60):
    data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def served(tmp_path_factory, flickr_index, tiny_clip):
    """An index imported from a clip-retrieval folder whose image_path values point everywhere, and
    the Flickr index, served by `retrieval serve` with a write token."""
    from retrieval import open_index

    tmp = tmp_path_factory.mktemp("attack")
    root = tmp / "images"
    real = [make_image(root / f"ok{i}.jpg", color=(10 * i, 50, 90)) for i in range(3)]
    (root / "fake.jpg").write_text("root:x:0:0:root:/root:/bin/bash\n")          # a text file named .jpg
    os.symlink("/etc/passwd", root / "link.jpg")                                 # a symlink leading out
    os.mkfifo(root / "pipe.jpg")                                                 # a FIFO: must not hang
    token = tmp / "token.txt"
    token.write_text("s3cret-write-token-0123456789")
    paths = ["/etc/passwd", str(token), str(real[0]), "ok1.jpg", "link.jpg", "fake.jpg", "pipe.jpg", "../token.txt",
             str(real[2])] + ["ok2.jpg"] * (N - 9)
    src_idx = open_index(flickr_index)
    ids = src_idx.ids("image")[:N]
    img, txt = src_idx.embeddings(ids, "image"), src_idx.embeddings(ids, "text")
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    src = write_inference_folder(tmp / "cr", img, txt, {"image_path": paths, "caption": [f"c{i}" for i in range(N)]},
                                 [N])
    out = tmp / "imp"
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "import", str(src), "--out", str(out), "--model",
                        str(TINY), "--image-root", str(root)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", f"imp={out}", f"flk={flickr_index}",
                             "--port", str(port), "--write-token-file", str(token)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        assert proc.poll() is None, proc.stderr.read()
        try:
            if call(url + "/health", timeout=5)[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    yield {"url": url, "proc": proc, "img": img, "token": token.read_bytes(), "real": real}
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert "index 'imp': 3 row(s) point outside its image roots" in err, err   # warned at start (by the paths' text)
    assert "Traceback" not in err


def _no_secret(data: bytes, secret: bytes) -> None:
    for form in (secret, base64.b64encode(secret), b"root:x:0:0", base64.b64encode(open("/etc/passwd", "rb").read()[:30])):
        assert form not in data


@pytest.mark.parametrize("row,why", [(0, "outside this index's image roots"), (1, "outside this index's image roots"),
                                     (4, "outside this index's image roots"), (5, "is not an image"),
                                     (6, "not a regular file"), (7, "outside this index's image roots")])
def test_files_outside_the_roots_or_not_images_are_refused(served, row, why):
    st, data, headers = call(f"{served['url']}/items/imp/{row}/image", timeout=20)
    assert st == 403 and headers["content-type"] == "application/json", (st, data)
    assert why in json.loads(data)["detail"]
    _no_secret(data, served["token"])


def test_images_under_the_roots_are_served(served):
    for row, path in ((2, served["real"][0]), (3, served["real"][1]), (8, served["real"][2])):
        st, data, headers = call(f"{served['url']}/items/imp/{row}/image")
        assert st == 200 and headers["content-type"] == "image/jpeg" and data == path.read_bytes()


def test_clip_back_routes_carry_no_foreign_bytes(served):
    emb = served["img"][0].tolist()
    st, data, headers = call(f"{served['url']}/knn-service", "POST", {"embedding_input": emb, "indice_name": "imp",
                                                                       "num_images": N, "num_result_ids": N})
    assert st == 200 and headers["access-control-allow-origin"] == "*"
    rows = {r["id"]: r for r in json.loads(data)}
    assert len(rows) == N
    assert all("image" not in rows[i] for i in (0, 1, 4, 5, 6, 7)) and "image" in rows[2]
    _no_secret(data, served["token"])
    st, data, _ = call(f"{served['url']}/metadata", "POST", {"ids": list(range(9)), "indice_name": "imp"})
    meta = {r["id"]: r["metadata"] for r in json.loads(data)}
    assert st == 200 and "image" in meta[2] and "image" in meta[3] and not any("image" in meta[i] for i in (0, 1, 4, 5, 6, 7))
    _no_secret(data, served["token"])


def test_where_bombs_and_splices_are_refused_at_once(served):
    url, pid = served["url"], served["proc"].pid
    call(f"{url}/search", "POST", {"text": "dog", "k": 3, "index": "flk", "where": "year > 0"})  # warm the filter table
    before = rss_mb(pid)
    for where in ("length(repeat(caption, 300000)) > 0", "length(lpad(caption, 300000000, 'x')) > 0",
                  "1=1) ORDER BY random() LIMIT 3 --", "true) OR (true", "__retrieval_row < 5",
                  "caption IN (SELECT caption FROM meta)", "read_text('/etc/passwd') IS NOT NULL"):
        t0 = time.perf_counter()
        st, data, _ = call(f"{url}/search", "POST", {"text": "dog", "k": 3, "index": "flk", "where": where})
        assert st == 422 and time.perf_counter() - t0 < 5, (where, st, data)
        assert "detail" in json.loads(data)
    assert rss_mb(pid) - before < 50
    st, data, _ = call(f"{url}/search", "POST", {"text": "dog", "k": 3, "index": "flk",
                                                 "where": "caption LIKE '%dog%'"})
    assert st == 200 and len(json.loads(data)["results"]) == 3


def test_template_bombs_are_refused_at_once(served):
    url, pid = served["url"], served["proc"].pid
    before = rss_mb(pid)
    for template in ("{:>999999999}", "{!r}", "{0:{1}}", "{} {:>99999999}", "{}" + "x" * 400):
        t0 = time.perf_counter()
        st, data, _ = call(f"{url}/classify", "POST", {"images_base64": ["x"], "classes": ["cat", "dog"],
                                                       "templates": [template], "index": "flk"})
        assert st == 422 and time.perf_counter() - t0 < 5, (template, st, data)
    assert rss_mb(pid) - before < 50


def test_hostile_json_is_a_4xx(served):
    url = served["url"]
    deep = b"[" * 50_000 + b"]" * 50_000
    for route in ("/knn-service", "/metadata", "/search", "/classify", "/items/flk/delete"):
        st, data, _ = call(url + route, "POST", raw_body=deep)
        assert 400 <= st < 500 and "detail" in json.loads(data), (route, st, data[:200])
    st, data, _ = call(url + "/metadata", "POST", {"ids": [2**70]})
    assert st == 400 and "ids" in json.loads(data)["detail"]
    st, data, _ = call(url + "/search", "POST", {"item_id": 2**70})
    assert st == 422
    st, data, _ = call(f"{url}/items/flk/{2**70}/image")
    assert st == 422
    st, data, _ = call(url + "/knn-service", "POST", {"embedding_input": [2**70] * 8, "indice_name": "flk"})
    assert st == 400
