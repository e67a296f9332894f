"""`build --ray`: embedding on Ray actors gives the folder a single-process build gives (keys, order,
embeddings within fp16 rounding); a killed actor loses no item; a killed driver resumes on rerun.
A real local cluster (``ray.init(local_mode=True)`` no longer exists): 2 CPUs and 2 logical GPUs,
so the GPU placement (one actor per GPU, ``num_cpus=0``) runs on a CPU box (DESIGN §11)."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval import open_index
from retrieval.ops.build import build_index
from retrieval.scale import RayBatches, actor_plan, split_positions
from retrieval.scale.ray_build import task_rows_for
from retrieval.store.manifest import load_manifest
from tests.conftest import SHARED

ray = pytest.importorskip("ray")
FLICKR = SHARED / "data" / "flickr8k_1k"
MODEL = SHARED / "models" / "tiny-clip-mix"


def test_split_positions_and_actor_plan():
    parts = split_positions(np.array([0, 2, 3, 7, 9]), 2)
    assert [p.tolist() for p in parts] == [[0, 2], [3, 7], [9]]
    with pytest.raises(ValueError, match="positive"):
        split_positions(np.arange(3), 0)
    assert actor_plan(4, 16) == (4, {"num_gpus": 1, "num_cpus": 0})        # one actor per GPU
    assert actor_plan(4, 16, actors=2) == (2, {"num_gpus": 1, "num_cpus": 0})
    assert actor_plan(0.5, 2) == (2, {"num_cpus": 1})                       # no whole GPU: per CPU
    assert actor_plan(0, 2, actors=3) == (3, {"num_cpus": 1})
    assert task_rows_for(2000, 2, 64) == 256          # ~4 tasks per actor, whole batches: 8 tasks
    assert task_rows_for(10, 2, 64) == 64             # never below a batch
    assert task_rows_for(10**7, 8, 64) == 4096        # capped


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 60 Flickr photos (5 captions each) as a manifest."""
    out = tmp_path_factory.mktemp("c") / "flk60.csv"
    with open(FLICKR / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = []
    for r in rows:
        if len({x["image"] for x in keep} | {r["image"]}) > 60:
            break
        keep.append(r)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "caption"])
        w.writeheader()
        w.writerows({"image": str(FLICKR / "images" / r["image"]), "caption": r["caption"]} for r in keep)
    return out


def _build(corpus, out, clip, **kw):
    return build_index(corpus, out, clip=clip, shard_size=25, workers=0, progress=False, **kw)


def _same_folder(a, b):
    x, y = open_index(a), open_index(b)
    ids = np.arange(len(x))
    assert len(x) == len(y) == 60
    assert [r["key"] for r in x.metadata(ids)] == [r["key"] for r in y.metadata(ids)]
    assert [r["caption"] for r in x.metadata(ids)] == [r["caption"] for r in y.metadata(ids)]
    for mod in ("image", "text"):
        np.testing.assert_allclose(x.embeddings(ids, mod), y.embeddings(ids, mod), atol=2e-3)  # fp16 rounding
    assert [s["rows"] for s in load_manifest(a)["shards"]] == [s["rows"] for s in load_manifest(b)["shards"]]


@pytest.fixture(scope="module")
def local_folder(corpus, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "idx"
    _build(corpus, out, tiny_clip)
    return out


def test_ray_build_equals_single_process_build_on_logical_gpus(cluster, corpus, tiny_clip, local_folder, tmp_path):
    source = RayBatches(task_rows=16)
    from retrieval.ops.bias import BiasExtension
    from retrieval.store.indexer import index_corpus
    from retrieval.corpus import open_corpus

    settings = {"shard_size": 25, "index_key": None, "memory_budget": 2**30, "max_pixels": 89_478_485,
                "batch_size": 8, "workers": 0, "recall_target": 0.95}
    placed = []
    orig = source.__call__

    def spy(*a):
        for b in orig(*a):
            placed.append([ray.get(x.pid.remote()) for x in source.pool_actors])
            yield b
    index_corpus(open_corpus(corpus), tmp_path / "idx", tiny_clip, settings, False,
                 BiasExtension(tmp_path / "idx", tiny_clip, "generic"), source=spy)
    assert len(set(placed[0])) == 2            # two logical GPUs: two actors, one per GPU
    _same_folder(local_folder, tmp_path / "idx")


class KillOne(RayBatches):
    """Kills one embedding actor (Ray restarts it) after the first batch came back."""

    def __call__(self, *a):
        for i, batch in enumerate(super().__call__(*a)):
            if i == 0:
                self.killed = ray.get(self.pool_actors[0].pid.remote())
                ray.kill(self.pool_actors[0], no_restart=False)
            yield batch


def test_a_killed_actor_loses_no_item(cluster, corpus, tiny_clip, local_folder, tmp_path, monkeypatch):
    import retrieval.scale as scale

    monkeypatch.setattr(scale, "RayBatches", KillOne)
    _build(corpus, tmp_path / "idx", tiny_clip, ray="auto", ray_task_rows=8)
    m = load_manifest(tmp_path / "idx")
    assert m["complete"] and m["counts"]["live"] == 60 and m["counts"]["skipped"] == 0
    _same_folder(local_folder, tmp_path / "idx")


def test_a_killed_driver_resumes_on_rerun(cluster, corpus, local_folder, tmp_path):
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "retrieval.cli", "build", str(corpus), "--out", str(out), "--model", str(MODEL),
           "--shard-size", "25", "--workers", "0", "--batch-size", "4", "--quiet", "--ray", cluster, "--ray-actors", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        m = load_manifest(out) if (out / "manifest.json").exists() else None
        if m and len(m["shards"]) >= 1:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    m = load_manifest(out)
    assert not m.get("complete") and 1 <= len(m["shards"]) < 3
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_manifest(out)["complete"]
    _same_folder(local_folder, out)
