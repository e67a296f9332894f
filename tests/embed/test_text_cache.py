"""The cached text tower: equal to the full model's text encoding, loaded without open_clip's package
(no torchvision, timm or dynamo), refused when stale or broken, and used by `retrieval search`."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from retrieval.embed import Encoder
from retrieval.embed.text_cache import (TextTower, cache_root, load_text_tower, save_text_tower, text_model,
                                        tokenizer_settings)
from tests.conftest import ROOT, TINY

TEXTS = ["a dog runs on the beach", "A GROUP of people sit around a blazing fire at night .", "x",
         "two children play " * 20, "café 東京 🙂"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tower_encodes_like_the_full_model(tiny_clip, cache):
    entry = save_text_tower(tiny_clip)
    assert entry is not None and entry.parent == cache == cache_root()
    tower = load_text_tower(tiny_clip.identity)
    assert isinstance(tower, TextTower)
    got, want = tower.texts(TEXTS), Encoder(tiny_clip).texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert save_text_tower(tiny_clip) == entry  # an existing entry is kept


def test_tower_loads_without_open_clips_package(tiny_clip, cache):
    save_text_tower(tiny_clip)
    code = f"""
import json, sys
from retrieval.embed.text_cache import load_text_tower
tower = load_text_tower(json.loads({json.dumps(json.dumps(tiny_clip.identity))}))
v = tower.texts(["a dog"])
heavy = sorted(m for m in ("torchvision", "timm", "torch._dynamo", "open_clip") if m in sys.modules)
from retrieval._compat import import_open_clip
oc = import_open_clip()
print(json.dumps({{"heavy": heavy, "shape": list(v.shape), "tok": hasattr(oc, "tokenizer"),
                  "same": oc.get_tokenizer("ViT-B-32")(["a dog"]).shape[1] == 77}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"heavy": [], "shape": [1, 256], "tok": True, "same": True}


def _own_model(tmp_path):
    """The tiny model loaded from a writable copy of its folder (the tests re-stamp its weights)."""
    from retrieval import load_model

    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return load_model(str(folder), device="cpu")


def test_stale_or_broken_entries_are_not_used(tmp_path, cache):
    clip = _own_model(tmp_path)
    entry = save_text_tower(clip)
    assert load_text_tower(clip.identity) is not None
    weights = clip.identity["weights_path"]
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten since its sha256 was checked
    assert load_text_tower(clip.identity) is None
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_text_tower(clip.identity) is not None
    other = dict(clip.identity, weights_sha256="0" * 64)
    assert load_text_tower(other) is None  # another model's entry
    (entry / "text.pt").write_bytes(b"PK\x03\x04 not a torchscript archive")
    assert load_text_tower(clip.identity) is None  # a broken entry is skipped, never raised
    assert not isinstance(text_model(clip.identity, "cpu"), TextTower)  # ... and the full model loads


def test_a_stale_or_broken_entry_is_replaced_by_the_next_full_load(tmp_path, cache):
    """One slow query repairs the entry: after the weights' stamp changes (the full load re-checks
    their sha256) or the trace breaks, ``text_model`` loads the full model and rewrites the entry,
    and the next process gets the cached tower again."""
    clip = _own_model(tmp_path)
    entry = save_text_tower(clip)
    weights = clip.identity["weights_path"]
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # same bytes, a new stamp
    assert load_text_tower(clip.identity) is None
    assert not isinstance(text_model(clip.identity, "cpu"), TextTower)   # the full load ...
    assert isinstance(load_text_tower(clip.identity), TextTower)         # ... rewrote the entry
    assert json.loads((entry / "meta.json").read_text())["weights_stamp"][1] == st.st_mtime_ns + 10**9
    (entry / "text.pt").write_bytes(b"PK\x03\x04 not a torchscript archive")
    assert not isinstance(text_model(clip.identity, "cpu"), TextTower)
    tower = load_text_tower(clip.identity)
    assert isinstance(tower, TextTower)
    np.testing.assert_allclose(tower.texts(TEXTS), Encoder(clip).texts(TEXTS), atol=2e-5)
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]        # nothing set aside is left


def _entry(root, name: str, size: int, used: float):
    d = root / name
    d.mkdir(parents=True)
    (d / "text.pt").write_bytes(b"x" * size)
    (d / "meta.json").write_text("{}")
    os.utime(d / "meta.json", (used, used))
    return d


def test_prune_keeps_the_cache_under_its_bound_least_recently_used_first(tmp_path):
    from retrieval.embed.text_cache import prune

    now = 1_000_000.0
    a, b, c = (_entry(tmp_path, n, 400, now - age) for n, age in (("a", 30), ("b", 10), ("c", 20)))
    assert prune(tmp_path, keep=b, limit=1000, now=now) == [a]             # 1,200 + metadata > 1,000
    assert prune(tmp_path, keep=b, limit=100, now=now) == [c]              # never the entry just written
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    old = tmp_path / ".x.tmp-123"
    old.mkdir()
    os.utime(old, (now - 7200, now - 7200))
    fresh = tmp_path / ".y.old-456"
    fresh.mkdir()
    os.utime(fresh, (now - 60, now - 60))                                 # another process may be using it
    assert prune(tmp_path, limit=10**9, now=now) == [old]
    assert fresh.exists() and b.exists()
    assert prune(tmp_path / "missing", limit=0) == []                     # never raises


def test_cache_bound_from_the_environment(monkeypatch, caplog):
    from retrieval.embed.text_cache import DEFAULT_MAX_MB, max_bytes

    monkeypatch.setenv("RETRIEVAL_CACHE_MAX_MB", "512")
    assert max_bytes() == 512 * 10**6
    monkeypatch.setenv("RETRIEVAL_CACHE_MAX_MB", "lots")
    assert max_bytes() == DEFAULT_MAX_MB * 10**6 and "not a number" in caplog.text
    monkeypatch.delenv("RETRIEVAL_CACHE_MAX_MB")
    assert max_bytes() == DEFAULT_MAX_MB * 10**6


def test_a_load_marks_its_entry_used_and_a_new_entry_evicts_the_oldest(tiny_clip, cache, monkeypatch):
    from retrieval.embed.text_cache import _size as entry_bytes

    entry = save_text_tower(tiny_clip)
    os.utime(entry / "meta.json", (1, 1))
    assert load_text_tower(tiny_clip.identity) is not None
    assert os.stat(entry / "meta.json").st_mtime > 1
    stale = _entry(cache, "0" * 32, 1000, 2)                               # an older torch's entry, say
    monkeypatch.setenv("RETRIEVAL_CACHE_MAX_MB", str(entry_bytes(entry) / 1e6))
    shutil.rmtree(entry)
    assert save_text_tower(tiny_clip) == entry and entry.exists() and not stale.exists()


def test_only_plain_simple_tokenizers_are_rebuilt(tiny_clip):
    assert tokenizer_settings(tiny_clip.tokenizer) == {"context_length": 32, "clean": "lower"}
    assert tokenizer_settings(lambda texts: None) is None


def test_cli_text_search_is_the_same_with_the_cache(flickr_index, tmp_path):
    env = dict(os.environ, RETRIEVAL_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "retrieval.cli", "search", str(flickr_index), "a dog in the snow", "--k", "5",
           "--json"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    first, second = ([json.loads(line) for line in r.stdout.splitlines()] for r in runs)
    assert len(first) == 5 and [r["id"] for r in first] == [r["id"] for r in second]
    assert np.allclose([r["score"] for r in first], [r["score"] for r in second], atol=1e-5)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the first run cached the tower, the second read it


def test_cli_build_warms_the_cache_for_the_first_search(tmp_path, monkeypatch):
    """`retrieval build` with a CPU float32 model caches its text tower, so the first `retrieval
    search` of the folder loads the tower, not open_clip whole."""
    from click.testing import CliRunner

    from retrieval.cli import main
    from retrieval.store.manifest import load_manifest
    from tests.conftest import FLICKR, first_captions

    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, caption in list(first_captions().items())[:6]:
        shutil.copy(FLICKR / "images" / name, photos / name)
        (photos / name).with_suffix(".txt").write_text(caption)
    got = CliRunner().invoke(main, ["build", str(photos), "--out", str(tmp_path / "idx"), "--model", str(TINY),
                                    "--device", "cpu", "--workers", "0", "--quiet"])
    assert got.exit_code == 0, got.output
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert isinstance(load_text_tower(load_manifest(tmp_path / "idx")["model"]), TextTower)

