"""Writes over HTTP need the write token; a running server picks up a newer manifest without a restart,
and no response ever mixes the old state with the new one."""
import json
import threading
import time
import types
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retrieval import build_from_embeddings, create_app, open_index
from retrieval.store.held import delete_keys
from tests.conftest import unit_vectors
from tests.serve.test_server import Server

TOKEN = "s3cret-token-for-tests"
GROUP = 20


def _folder(path):
    rng = np.random.default_rng(0)
    q = unit_vectors(1, 16, 7)[0]
    near = q + 0.01 * rng.standard_normal((GROUP, 16)).astype(np.float32)   # the 20 best matches of q
    x = np.concatenate([near, unit_vectors(2000, 16, 8)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [{"key": f"k{i}", "image_path": "", "caption": f"c{i}"} for i in range(len(x))]
    rows[-1]["key"], rows[-2]["key"] = "photos/2024/a b.jpg", "x/y"   # keys holding '/' (and a space)
    build_from_embeddings(path, x, x, {"arch": "synthetic"}, rows, shard_size=700, index_key="IVF8,Flat")
    return q


def _served(folder, **kw):
    idx = open_index(folder)
    idx.clip = types.SimpleNamespace()  # synthetic index: queries by embedding only
    return Server(create_app({"i": idx}, **kw))


def call(srv, method, path, body=None, headers=None, raw=None):
    h = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(srv.url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_hot_reload_under_concurrent_queries_never_mixes_states(tmp_path):
    q = _folder(tmp_path / "idx")
    srv = _served(tmp_path / "idx", reload_interval=0.02)
    try:
        results, errors, stop = [], [], threading.Event()

        def client():
            while not stop.is_set():
                st, body = call(srv, "POST", "/search", {"embedding": q.tolist(), "k": GROUP})
                if st != 200:
                    errors.append((st, body))
                    continue
                ids = [r["id"] for r in body["results"]]
                results.append((len(ids), sum(i < GROUP for i in ids)))

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client) for _ in range(6)]
            time.sleep(0.5)
            found = delete_keys(tmp_path / "idx", [f"k{i}" for i in range(GROUP)])  # another process's write
            assert len(found.found) == GROUP
            time.sleep(1.0)
            stop.set()
            for f in futures:
                f.result()
        assert not errors and results
        assert all(n == GROUP for n, _ in results)                          # full top-k throughout
        seen = {g for _, g in results}
        assert seen == {0, GROUP}, seen                                     # all old or all new, never a mix
        st, body = call(srv, "POST", "/search", {"embedding": q.tolist(), "k": GROUP})
        assert st == 200 and not any(r["id"] < GROUP for r in body["results"])
    finally:
        srv.stop()


def test_writes_need_the_token(tmp_path):
    q = _folder(tmp_path / "idx")
    off = _served(tmp_path / "idx")
    try:
        assert call(off, "POST", "/items/i/delete", {"keys": ["k0"]},
                    {"Authorization": f"Bearer {TOKEN}"})[0] == 403         # no token configured: writes are off
        assert call(off, "POST", "/admin/reload", {})[0] == 403
    finally:
        off.stop()
    srv = _served(tmp_path / "idx", write_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert call(srv, "POST", "/items/i/delete", {"keys": ["k0"]})[0] == 401
        assert call(srv, "POST", "/items/i/delete", {"keys": ["k0"]}, {"Authorization": "Bearer wrong"})[0] == 401
        assert call(srv, "POST", "/items/i/delete", None, {**auth, "Content-Type": "text/plain"},
                    raw=b'{"keys": ["k0"]}')[0] in (415, 422)                 # never lenient parsing for writes
        st, body = call(srv, "POST", "/items/i/delete", {"keys": ["k0", "k1", "zzz"]}, auth)
        assert st == 200 and body == {"index": "i", "deleted": 2, "already_deleted": 0, "not_found": ["zzz"]}
        st, body = call(srv, "DELETE", "/items/i/k2", None, auth)
        assert st == 200 and body["deleted"] == 1
        st, body = call(srv, "DELETE", "/items/i/photos/2024/a%20b.jpg", None, auth)   # '/' in the key, as is
        assert st == 200 and body["deleted"] == 1, body
        st, body = call(srv, "DELETE", "/items/i/x%2Fy", None, auth)                  # or URL-encoded
        assert st == 200 and body["deleted"] == 1, body
        assert call(srv, "DELETE", "/items/i/x%2Fy", None)[0] == 401
        ids = [r["id"] for r in call(srv, "POST", "/search", {"embedding": q.tolist(), "k": 10})[1]["results"]]
        assert not {0, 1, 2} & set(ids) and len(ids) == 10
        assert call(srv, "POST", "/search", {"item_id": 1, "k": 3})[0] == 404   # a deleted item is gone everywhere
        st, body = call(srv, "POST", "/admin/reload", {}, auth)
        assert st == 200 and body["indexes"]["i"] >= 1
        assert call(srv, "POST", "/search", {"embedding": q.tolist(), "where": "key = 'k5'"})[1]["results"][0]["key"] == "k5"
        assert call(srv, "POST", "/search", {"embedding": q.tolist(), "where": "nope = 1"})[0] == 422
        assert call(srv, "POST", "/search", {"embedding": q.tolist(), "where": "key = 'k5'", "dedup": 0.94})[0] == 200
    finally:
        srv.stop()


def test_the_cli_reads_the_token_file(tmp_path):
    from retrieval.serve.admin import authorised, read_token

    (tmp_path / "t").write_text(TOKEN + "\n")
    assert read_token(str(tmp_path / "t")) == TOKEN
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(str(tmp_path / "short"))
    assert authorised(TOKEN, f"Bearer {TOKEN}") == (0, "") and authorised(TOKEN, f"bearer {TOKEN}")[0] == 0
    assert authorised(None, f"Bearer {TOKEN}")[0] == 403 and authorised(TOKEN, None)[0] == 401
