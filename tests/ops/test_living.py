"""Living indexes, build side: photos without captions, sync by re-running the build, the changed-corpus
resume, kill -9 during sync / delete / compact, appends without retraining, offsets after changes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval import build_from_embeddings, build_index, open_index
from retrieval.ops import compact
from tests.conftest import FLICKR, TINY, bias_folder, first_captions, needs_shared, unit_vectors

pytestmark = needs_shared
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _photos(root, names, captions=True):
    root.mkdir(parents=True, exist_ok=True)
    cap = first_captions()
    for i, n in enumerate(names):
        shutil.copy(FLICKR / "images" / n, root / n)
        if captions is True or (captions == "half" and i % 2 == 0):
            (root / n).with_suffix(".txt").write_text(cap[n])


def _keys(folder):
    idx = open_index(folder)
    return [r["key"] for r in idx.metadata(idx.ids())]


def _keyword_agrees_with_captions(folder, word="a"):
    """Keyword search for ``word`` returns exactly the live rows whose caption holds it as a word."""
    import re

    idx = open_index(folder)
    ids = idx.ids()
    want = {int(i) for i, r in zip(ids, idx.metadata(ids)) if word in re.findall(r"\w+", (r["caption"] or "").lower())}
    s, got = idx.keyword_search(word, max(1, len(ids)))
    assert set(got[0][got[0] >= 0].tolist()) == want
    return want


def _cli_build(corpus, out, *extra):
    return [sys.executable, "-m", "retrieval.cli", "build", str(corpus), "--out", str(out), "--model", str(TINY),
            "--shard-size", "10", "--batch-size", "5", "--workers", "0", "--quiet", *extra]


def test_photos_without_captions_are_first_class(tmp_path, tiny_clip):
    names = list(first_captions())[:24]
    _photos(tmp_path / "none", names[:12], captions=False)
    _photos(tmp_path / "half", names, captions="half")
    m = build_index(tmp_path / "none", tmp_path / "i0", shard_size=10, workers=0, progress=False, clip=tiny_clip,
                    bias_bank=None)
    assert m["counts"]["live"] == 12 and m["counts"]["captionless"] == 12
    idx = open_index(tmp_path / "i0", tiny_clip)
    assert len(idx.query(text="a dog", k=5)[0]) == 5                          # text -> image
    assert idx.query(image=str(tmp_path / "none" / names[3]), k=1)[0][0]["key"] == names[3][:-4]  # image -> image
    assert idx.query(text="a dog", k=5, target="text")[0] == []               # no caption to return

    m = build_index(tmp_path / "half", tmp_path / "i1", shard_size=10, workers=0, progress=False, clip=tiny_clip,
                    bias_bank="corpus")
    assert m["counts"]["captionless"] == 12 and m["counts"]["live"] == 24
    idx = open_index(tmp_path / "i1", tiny_clip)
    captioned = {n[:-4] for i, n in enumerate(names) if i % 2 == 0}
    for rerank in ("clip", "bsap", "nnn", "hybrid"):
        rows = idx.query(image=str(tmp_path / "half" / names[1]), k=24, target="text", rerank=rerank)[0]
        assert {r["key"] for r in rows} == captioned                          # only items that have a caption
        assert len(idx.query(text="a dog", k=24, rerank=rerank)[0]) == 24      # every photo is an image target
    bank = np.load(bias_folder(tmp_path / "i1") / "bank_bsap_image.npy")      # the corpus bank: captions only
    refs = np.load(bias_folder(tmp_path / "i1") / "ref_nnn_image.npy")
    assert np.linalg.norm(bank, axis=1).min() > 0.9 and np.linalg.norm(refs, axis=1).min() > 0.9
    from retrieval import Classifier

    clf = Classifier(idx, ["dog", "person"])
    _, used = clf.caption_probs(idx.embeddings([1, 3], "image"))
    assert all(r["key"] in captioned for r in idx.metadata(used.ravel()))   # X-MoRe reads captioned neighbours only

    from retrieval.ops.calibrate import _Pairs
    from retrieval.store.manifest import load_manifest

    idx.delete([names[0][:-4], names[3][:-4]])                             # one captioned, one not
    m1 = load_manifest(tmp_path / "i1")
    pairs = _Pairs(tmp_path / "i1", m1, m1["shards"])
    want = np.concatenate([np.intersect1d(t, i) + sh["offset"] for sh, t, i in
                           zip(m1["shards"], pairs.usable["text"], pairs.usable["image"])])
    got = pairs.captioned_rows()                                           # the calibration's pairs: live, captioned
    assert np.array_equal(got, want) and len(got) == 11 and got.dtype == np.int64

    m = build_index(tmp_path / "half", tmp_path / "i2", shard_size=10, workers=0, progress=False, clip=tiny_clip,
                    bias_bank=None, require_captions=True)
    assert m["counts"]["live"] == 12 and m["counts"]["skipped"] == 12          # the old behaviour, on request


def test_sync_adds_changes_and_deletes(tmp_path, tiny_clip):
    names = list(first_captions())[:30]
    corpus, out = tmp_path / "photos", tmp_path / "idx"
    _photos(corpus, names[:20])
    kw = dict(shard_size=10, workers=0, progress=False, clip=tiny_clip, bias_bank="corpus")
    build_index(corpus, out, **kw)
    _photos(corpus, names[20:30])                                            # +10
    for n in names[:4]:                                                      # -4
        (corpus / n).unlink()
        (corpus / n).with_suffix(".txt").unlink()
    (corpus / names[5]).with_suffix(".txt").write_text("a bright red sports car on a racetrack")  # 1 changed
    report: list = []
    m = build_index(corpus, out, report=report, **kw)
    assert report[0].line() == "+10 added, -4 deleted, 1 changed" and report[0].unchanged == 15
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 26 and set(keys) == {n[:-4] for n in names[4:30]}
    idx = open_index(out, tiny_clip)
    got = idx.query(text="a bright red sports car on a racetrack", k=1, target="text")[0][0]
    assert got["key"] == names[5][:-4] and got["caption"] == "a bright red sports car on a racetrack"
    assert m["counts"]["deleted"] == 5                                       # 4 gone + the old version of 1
    s, ids = idx.keyword_search("racetrack", 5)                              # the keyword side follows the sync
    assert ids[0].tolist()[:2] == [got["id"], -1]
    assert len(_keyword_agrees_with_captions(out)) > 10
    again: list = []
    build_index(corpus, out, report=again, **kw)
    assert again[0].line() == "+0 added, -0 deleted, 0 changed" and again[0].unchanged == 26


def test_resume_is_correct_when_the_corpus_changed_in_between(tmp_path, tiny_clip):
    """The issue's scenario: killed after the first shard, then files appear that sort before the old ones."""
    names = list(first_captions())[:40]
    corpus, out = tmp_path / "photos", tmp_path / "idx"
    _photos(corpus, names[:30])
    proc = subprocess.Popen(_cli_build(corpus, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((out / "manifest.json").read_text())["shards"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    cap = first_captions()
    for n in names[30:40]:                                                  # sort before every old file
        shutil.copy(FLICKR / "images" / n, corpus / f"000_{n}")
        (corpus / f"000_{n}").with_suffix(".txt").write_text(cap[n])
    r = subprocess.run(_cli_build(corpus, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    keys = _keys(out)
    want = {n[:-4] for n in names[:30]} | {f"000_{n[:-4]}" for n in names[30:40]}
    assert len(keys) == len(set(keys)) == 40 and set(keys) == want        # every item exactly once
    assert len(_keyword_agrees_with_captions(out)) > 20                     # the full-text side too


@pytest.mark.parametrize("operation", ["sync", "delete", "compact"])
def test_kill_9_leaves_a_consistent_index_and_a_rerun_completes(tmp_path, tiny_clip, operation):
    names = list(first_captions())[:40]
    corpus, out = tmp_path / "photos", tmp_path / "idx"
    _photos(corpus, names[:20])
    build_index(corpus, out, shard_size=10, batch_size=5, workers=0, progress=False, clip=tiny_clip,
                bias_bank="corpus")
    before = set(_keys(out))
    if operation == "sync":
        _photos(corpus, names[20:40])
        cmd = _cli_build(corpus, out)
        after = before | {n[:-4] for n in names[20:40]}
    elif operation == "delete":
        cmd = [sys.executable, "-m", "retrieval.cli", "delete", str(out), *sorted(before)[:8]]
        after = set(sorted(before)[8:])
    else:
        from retrieval.store.held import delete_keys

        delete_keys(out, sorted(before)[::3])
        before = after = set(_keys(out))
        cmd = [sys.executable, "-m", "retrieval.cli", "compact", str(out), "--threshold", "0.1"]
    killed_mid_write = 0
    for delay in (0.0, 0.002, 0.01, 0.05):  # after the first new file appears: at different points of the writing
        existing = {p for p in out.rglob("*") if p.is_file()}
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and not any(
                p.is_file() and p not in existing for p in out.rglob("*") if p.name != ".lock"):
            time.sleep(0.001)
        time.sleep(delay)
        killed_mid_write += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        keys = _keys(out)                                                   # opens: every listed file intact
        assert len(keys) == len(set(keys)) and before & after <= set(keys) <= before | after
        _keyword_agrees_with_captions(out)                                  # full-text files in step too
        if set(keys) == after:
            break
    assert killed_mid_write >= 1
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert set(_keys(out)) == after and len(_keys(out)) == len(after)


def test_appends_reuse_the_trained_quantizer_and_offsets_stay_exact(tmp_path):
    x, t = unit_vectors(6000, 16, 0), unit_vectors(6000, 16, 1)
    rows = [{"key": f"k{i}", "image_path": "", "caption": "c"} for i in range(6000)]
    out = tmp_path / "ivf"
    build_from_embeddings(out, x[:4000], t[:4000], {"arch": "synthetic"}, rows[:4000], shard_size=2000,
                          index_key="IVF16,Flat")
    from retrieval.ops.bias import BiasExtension
    from retrieval.store.indexer import write_embeddings  # noqa: F401 - the store's own appender is the writer
    from retrieval.store.generations import publish
    from retrieval.store.lock import write_lock
    from retrieval.store.manifest import require_manifest
    from retrieval.store.writer import ShardWriter

    with write_lock(out):  # append 2000 rows the way a sync does: one ShardWriter commit, offsets in the same publish
        m = require_manifest(out)
        import pyarrow as pa

        w = ShardWriter(out, m, pa.Table.from_pylist(rows[:1]).schema, m["build"], [],
                        extend=BiasExtension(out))
        w.add(x[4000:], t[4000:], [{**r, "_pos": 4000 + i} for i, r in enumerate(rows[4000:])], [True] * 2000, [], 6000)
        w.finish()
        publish(out, m)
    m = require_manifest(out)
    assert [s["index"]["image"]["trained_reused"] for s in m["shards"]] == [True, True, True]  # one shared quantizer
    idx = open_index(out, search_params="nprobe=16")
    q = unit_vectors(20, 16, 2)
    stored = idx.embeddings(idx.ids(), "image")
    for alpha in (0.5, 1.0):
        want = np.argsort(-(q @ stored.T - alpha * idx.biases.all("nnn", "image")), axis=1)[:, :10]
        got = idx.search(q, 10, rerank="nnn", alpha=alpha)[1]
        assert (np.sort(got, 1) == np.sort(want, 1)).all()                # exact over every shard, appended too
    from retrieval.methods.rerank import nnn_bias

    refs = np.load(bias_folder(out) / "ref_nnn_image.npy")
    shift = idx.biases.shift("nnn", "image")  # offsets are stored on the fp16 grid of the codes (<= 2^-11 |c - s|)
    want = nnn_bias(stored[4000:], refs, k=idx.manifest["bias"]["nnn_k"])
    assert (np.abs(idx.biases.per_shard("nnn", "image")[2] - want) <= 2.0 ** -11 * np.abs(want - shift) + 1e-6).all()
    idx.delete([f"k{i}" for i in range(0, 6000, 4)])
    rep = compact(out)
    assert rep.rewritten_shards == 3 and rep.rows_reclaimed == 1500
    idx = open_index(out, search_params="nprobe=16")
    live = idx.ids()
    assert len(live) == 4500 and {r["key"] for r in idx.metadata(live)} == {f"k{i}" for i in range(6000) if i % 4}
    stored = idx.embeddings(live, "image")
    want = live[np.argsort(-(q @ stored.T - idx.biases.all("nnn", "image")[np.searchsorted(idx.ids(), live)]), axis=1)[:, :10]]
    got = idx.search(q, 10, rerank="nnn", alpha=1.0)[1]
    assert (np.sort(got, 1) == np.sort(want, 1)).mean() > 0.99            # offsets moved with their rows


def test_a_delete_holds_across_syncs_until_restored(tmp_path):
    """A takedown stays down: re-running the build over a corpus that still has the file does not bring
    a deleted key back; `retrieval delete --restore` does (the row is live again at once)."""
    names = list(first_captions())[:12]
    _photos(tmp_path / "photos", names)
    out = tmp_path / "idx"
    assert subprocess.run(_cli_build(tmp_path / "photos", out), env=ENV, capture_output=True).returncode == 0
    gone = names[3][:-4]
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "delete", str(out), gone], env=ENV, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "deleted 1" in r.stdout
    r = subprocess.run(_cli_build(tmp_path / "photos", out), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and "+0 added" in r.stdout and "1 held" in r.stdout, r.stdout + r.stderr
    assert gone not in _keys(out) and len(_keys(out)) == 11
    (tmp_path / "photos" / names[3]).with_suffix(".txt").write_text("a changed caption")   # changed: still held
    r = subprocess.run(_cli_build(tmp_path / "photos", out), env=ENV, capture_output=True, text=True)
    assert gone not in _keys(out) and "1 held" in r.stdout
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "delete", str(out), "--restore", gone, "nope"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "restored 1 (1 live again now), not deleted 1" in r.stdout, r.stdout + r.stderr
    assert gone in _keys(out)
    r = subprocess.run(_cli_build(tmp_path / "photos", out), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and "1 changed" in r.stdout and "held" not in r.stdout, r.stdout   # the new caption
    assert _keys(out).count(gone) == 1
    info = json.loads(subprocess.run([sys.executable, "-m", "retrieval.cli", "info", str(out), "--json"], env=ENV,
                                     capture_output=True, text=True).stdout)
    assert info["held"] == 0


def test_add_embeddings_of_a_held_key_releases_it(tmp_path):
    from retrieval import add_embeddings
    from retrieval.store.held import held_keys
    from retrieval.store.manifest import require_manifest

    rows = [{"key": f"k{i}", "image_path": "", "caption": f"c{i}"} for i in range(30)]
    build_from_embeddings(tmp_path / "i", unit_vectors(30, 16, 0), unit_vectors(30, 16, 1), {"arch": "synthetic"}, rows)
    open_index(tmp_path / "i").delete(["k3", "k4"])
    assert held_keys(tmp_path / "i", require_manifest(tmp_path / "i")) == {"k3", "k4"}
    add_embeddings(tmp_path / "i", unit_vectors(1, 16, 5), unit_vectors(1, 16, 6), [{"key": "k3", "caption": "again"}])
    assert held_keys(tmp_path / "i", require_manifest(tmp_path / "i")) == {"k4"}
    assert "k3" in _keys(tmp_path / "i") and "k4" not in _keys(tmp_path / "i")
