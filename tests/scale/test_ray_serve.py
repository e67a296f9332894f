"""Sharded serving on Ray: 2 shard groups x 2 replicas answer what the in-process index answers, for
every rerank method, a ``where`` filter and a tombstone; a replica killed during queries is replaced
by the other one; a group with no replica left gives a partial answer naming its shards (HTTP 200
with ``partial: true``, never a 500). A local cluster: 2 CPUs, serving actors get a CPU share each."""
import logging
import threading
import time

import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.query.partial import collect_missing
from retrieval.scale import serve_on_ray, serve_plan, shard_group
from tests.conftest import unit_vectors

ray = pytest.importorskip("ray")
MODEL = {"arch": "synthetic", "pretrained": None, "embed_dim": 32, "logit_scale": 100.0}
N = 2000


def test_serve_plan_and_groups():
    assert serve_plan(2, 2, 4, 16) == {"num_gpus": 1, "num_cpus": 0}     # one GPU per actor
    assert serve_plan(2, 2, 0, 2) == {"num_cpus": 0.5}                   # a share of the CPUs
    assert serve_plan(2, 1, 0, 16) == {"num_cpus": 1.0}                  # at most one each
    assert serve_plan(2, 1, 0, 2, actors=4) == {"num_cpus": 0.5}         # two indexes share the cluster
    assert serve_plan(2, 1, 2, 2, actors=4) == {"num_cpus": 0.5}         # 2 GPUs are too few for 4 actors
    assert 3 * serve_plan(3, 1, 0, 2)["num_cpus"] <= 2                   # shares rounded down: they fit
    with pytest.raises(ValueError, match="positive"):
        serve_plan(0, 1, 0, 2)
    assert [shard_group(i, 3) for i in range(5)] == [0, 1, 2, 0, 1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2,000 items in 4 shards (IVF shards: combined indexes), half captioned, a 'color' column,
    one item deleted."""
    out = tmp_path_factory.mktemp("rs") / "idx"
    img, txt = unit_vectors(N, 32, 1), unit_vectors(N, 32, 2)
    txt[::2] = 0  # even rows: no caption
    rows = [{"key": f"k{i}", "image_path": "", "caption": f"caption {i}" if i % 2 else "",
             "color": ("red", "blue")[i % 3 == 0]} for i in range(N)]
    build_from_embeddings(out, img, txt, MODEL, rows, shard_size=500, index_key="IVF8,Flat")
    open_index(out).delete(["k7"])
    return out


def _cases():
    yield dict(rerank="clip")
    yield dict(rerank="bsap")
    yield dict(rerank="hybrid")
    yield dict(rerank="nnn")
    yield dict(rerank="bsap", candidates=50)
    yield dict(rerank="clip", where="color = 'blue'")
    yield dict(rerank="nnn", target="text")
    yield dict(rerank="clip", dedup=0.99)


def _same_ranking(s1, i1, s0, i0, what):
    """Same ids in the same order and the same scores; only items whose scores tie within float32
    rounding may swap (a group may scan exactly where the whole index probes its lists)."""
    np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-6, err_msg=what)
    for a, b, sc in zip(i1, i0, s0):
        assert set(a) == set(b), what
        diff = np.flatnonzero(a != b)
        assert np.ptp(sc[diff]) <= 1e-5 if len(diff) else True, what


def test_fan_out_equals_in_process(cluster, folder):
    local = open_index(folder)
    remote = open_index(folder)
    pool = serve_on_ray(remote, groups=2, replicas=2)
    try:
        q = unit_vectors(16, 32, 9)
        q[0] = local.embeddings([7])[0]          # the deleted item's own vector: it must not come back
        for kw in _cases():
            with collect_missing() as missing:
                s1, i1 = remote.search(q, 20, **kw)
            s0, i0 = local.search(q, 20, **kw)
            assert not missing
            _same_ranking(s1, i1, s0, i0, str(kw))
            assert 7 not in i1
        blue = {i for i in range(N) if i % 3 == 0}
        _, ids = remote.search(q, 20, where="color = 'blue'")
        assert set(ids.ravel()) <= blue
        _, ids = remote.search(q, 20, target="text")
        assert all(i % 2 == 1 for i in ids.ravel())  # only captioned rows
        # a delete through the router reaches the groups (the router's newer generation)
        remote.delete(["k11"])
        _, i_after = remote.search(local.embeddings([11]), 5)
        assert 11 not in i_after
        assert i_after.shape == (1, 5) and (i_after >= 0).all()
    finally:
        pool.close()


def test_compressed_shards_fan_out_as_in_process(cluster, tmp_path):
    """IVF-PQ shards (candidates from codes, re-scored exactly from the npy in each group's actor)
    served on two shard groups answer as the same folder in process."""
    out = tmp_path / "pq"
    img, txt = unit_vectors(4000, 32, 21), unit_vectors(4000, 32, 22)
    build_from_embeddings(out, img, txt, MODEL, shard_size=1000, index_key="IVF8,PQ17")
    local, remote = open_index(out), open_index(out)
    assert local._snap.shard_set.compressed("image")
    pool = serve_on_ray(remote, groups=2)
    try:
        q = unit_vectors(8, 32, 23)
        for kw in (dict(rerank="clip"), dict(rerank="bsap"), dict(rerank="nnn")):
            with collect_missing() as missing:
                s1, i1 = remote.search(q, 10, **kw)
            s0, i0 = local.search(q, 10, **kw)
            assert not missing
            _same_ranking(s1, i1, s0, i0, str(kw))
    finally:
        pool.close()


def _wait_dead(actor, within_s: float = 30.0) -> None:
    """Return once ``actor`` refuses calls (killed for good), or fail the test after ``within_s``."""
    t_end = time.monotonic() + within_s
    while time.monotonic() < t_end:
        try:
            ray.get(actor.pid.remote(), timeout=1.0)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"actor {actor} still answers {within_s} s after ray.kill")


def test_killed_replica_then_partial(cluster, folder, caplog):
    from retrieval.serve import create_app
    from fastapi.testclient import TestClient

    class Clip:  # the HTTP layer needs a model only to encode texts; these queries are embeddings
        identity = MODEL
        logit_scale = 100.0

    idx = open_index(folder)
    local = open_index(folder)
    pool = serve_on_ray(idx, groups=2, replicas=2, timeout_s=20.0)
    try:
        q = unit_vectors(4, 32, 5)
        want = local.search(q, 10)[1]
        # kill a replica of group 0 while queries run: the other replica answers, same results
        caplog.set_level(logging.WARNING, logger="retrieval.ray")
        killer = threading.Timer(0.3, lambda: ray.kill(pool.actors[0][0], no_restart=False))
        killer.start()
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            pool._turn[0] = 0  # ask the replica being killed first
            with collect_missing() as missing:
                got = idx.search(q, 10)[1]
            assert not missing
            assert (np.sort(got, 1) == np.sort(want, 1)).all()
        killer.join()
        assert any("replica 0 failed" in r.getMessage() for r in caplog.records)
        # no replica of group 0 left: the answer is group 1's shards, flagged with group 0's shards
        for a in pool.actors[0]:
            ray.kill(a, no_restart=True)
        for a in pool.actors[0]:  # ray.kill is asynchronous: a call sent at once may still be answered
            _wait_dead(a)
        with collect_missing() as missing:
            s, ids = idx.search(q, 10)
        shards = [s_["id"] for s_ in idx.shards]
        assert missing == {i for i in shards if i % 2 == 0}
        live = ids[ids >= 0]
        assert len(live) and all(idx.shard_set.locate([i])[0][0] % 2 == 1 for i in live)
        idx.clip = Clip()
        client = TestClient(create_app({"x": idx}))
        r = client.post("/search", json={"embedding": q[0].tolist(), "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["partial"] is True and body["missing_shards"] == sorted(missing)
        assert len(body["results"]) == 5
    finally:
        pool.close()


def test_cli_serve_on_ray(cluster, flickr_index, tiny_clip):
    """`retrieval serve IDX --ray ADDRESS --shard-groups 2` answers a text query as the in-process index."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", str(flickr_index), "--port", str(port),
                             "--ray", address, "--shard-groups", "2"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        body = json.dumps({"text": "a dog runs on the grass", "k": 8, "rerank": "nnn"}).encode()
        for _ in range(600):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/search", body,
                                             {"content-type": "application/json"})
                got = json.loads(urllib.request.urlopen(req, timeout=30).read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        local = open_index(flickr_index, tiny_clip).query(text=["a dog runs on the grass"], k=8, rerank="nnn")[0]
        assert [r["id"] for r in got["results"]] == [r["id"] for r in local]
        assert got["partial"] is False and got["missing_shards"] == []
        body = json.dumps({"text": "a dog chasing a man", "k": 5, "rerank": "comclip"}).encode()  # candidates via Ray
        req = urllib.request.Request(f"http://127.0.0.1:{port}/search", body, {"content-type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=60).read())
        local = open_index(flickr_index, tiny_clip).query(text="a dog chasing a man", k=5, rerank="comclip")[0]
        assert [r["id"] for r in got["results"]] == [r["id"] for r in local]
    finally:
        proc.terminate()
        err = proc.communicate(timeout=60)[1]
    assert "searching on Ray: 2 shard groups x 1 replicas" in err
    assert "Traceback" not in err


def _serve(args: list, port: int):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", *args, "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_indexes_on_ray_share_the_cluster(cluster, flickr_index):
    """Two indexes x 2 shard groups on a 2-CPU cluster: every actor gets a share that leaves room for
    the others' (each asked for a whole CPU before, and the second index waited for ever)."""
    import json
    import urllib.request

    port = _free_port()
    proc = _serve([f"A={flickr_index}", f"B={flickr_index}", "--ray", ray.get_runtime_context().gcs_address,
                   "--shard-groups", "2", "--ray-start-timeout", "60"], port)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/search", json.dumps(
                    {"text": "a dog", "k": 3, "index": "B"}).encode(), {"content-type": "application/json"})
                got = json.loads(urllib.request.urlopen(req, timeout=30).read())
                break
            except OSError:
                time.sleep(0.2)
        assert len(got["results"]) == 3 and got["index"] == "B"
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


@pytest.fixture()
def full_cluster(cluster):
    """Every CPU and GPU of the test cluster held by another actor: nothing more can be placed."""
    @ray.remote(num_cpus=2, num_gpus=2)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote(), timeout=60)
    yield ray.get_runtime_context().gcs_address
    ray.kill(holder)


def test_actors_that_cannot_be_placed_time_out_in_one_line(full_cluster, flickr_index):
    port = _free_port()
    proc = _serve([str(flickr_index), "--ray", full_cluster, "--ray-start-timeout", "5"], port)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1, err
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert line and "were not placed within 5 s" in line[0] and "CPU" in line[0], err
    assert "Traceback" not in err


def test_ctrl_c_stops_a_server_waiting_for_actors(full_cluster, flickr_index):
    import signal

    port = _free_port()
    proc = _serve([str(flickr_index), "--ray", full_cluster, "--ray-start-timeout", "600"], port)
    time.sleep(15)  # the model is loaded and the actors are waiting for room
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    err = proc.communicate(timeout=60)[1]
    assert time.monotonic() - t0 < 30 and proc.returncode != 0, err
    assert "Traceback" not in err
