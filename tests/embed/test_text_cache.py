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


def test_stale_or_broken_entries_are_not_used(tmp_path, cache):
    from retrieval import load_model

    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    clip = load_model(str(folder), device="cpu")
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
