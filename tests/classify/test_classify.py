"""X-MoRe classification and `retrieval eval` end to end on the ../shared fixtures."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SHARED, make_image
from retrieval.classify import Classifier, check_classes, expand_images, read_classes, read_labels
from retrieval.cli import main
from retrieval.errors import IndexFolderError
from retrieval import open_index

CIFAR = SHARED / "data" / "cifar10_test_1k"
NETTE = SHARED / "data" / "imagenette_val_224"


def _subset(src, tmp_path, per_class=8):
    """A labels.csv (absolute paths) with the first ``per_class`` images of each class."""
    if not (src / "labels.csv").exists():
        pytest.skip(f"{src} not present")
    with open(src / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen, keep = {}, []
    for r in rows:
        if seen.get(r["label"], 0) < per_class:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            keep.append({"path": str(src / r["path"]), "label": r["label"]})
    out = tmp_path / f"{src.name}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(keep)
    return out


@pytest.mark.parametrize("src", [CIFAR, NETTE], ids=["cifar10", "imagenette"])
def test_xmore_classifies_held_out_photos_with_the_flickr_index(flickr_index, tiny_clip, tmp_path, src):
    from retrieval.classify import eval_classification

    paths, labels = read_labels(_subset(src, tmp_path))
    classes = sorted(set(labels))
    clf = Classifier(open_index(flickr_index, tiny_clip), classes, neighbours=64, captions=16)
    rows, summary = eval_classification(clf, paths, labels, batch_size=32)
    acc = {r["method"]: r["accuracy"] for r in rows}
    assert summary["images"] == len(paths) == 80 and summary["skipped"] == 0
    assert acc["zero-shot CLIP (image only)"] >= 0.3          # chance is 0.1 (full sets: 0.52 / 0.60)
    assert acc["X-MoRe (batch-mean weights)"] >= 0.25
    assert set(acc) == {"zero-shot CLIP (image only)", "captions only", "fixed 0.5/0.5",
                        "X-MoRe (batch-mean weights)", "X-MoRe (official stream weights)"}
    # the Classifier's own path gives the same X-MoRe labels as the eval's shared arrays
    res = clf.classify(paths[:20], "xmore", means=None)
    assert len(res) == 20 and all(len(r.neighbours) == 16 and len(r.image_top) == 3 for r in res)
    assert all(r.label in classes for r in res)


def test_neighbour_captions_are_the_stored_ones_sorted_by_similarity(flickr_index, tiny_clip):
    idx = open_index(flickr_index, tiny_clip)
    clf = Classifier(idx, ["dog", "person", "water"], neighbours=32, captions=5)
    x = idx.embeddings([3, 500], "image")
    pred, used = clf.predict(x)
    caps = idx.embeddings(used, "text")                        # stored caption embeddings, never re-encoded
    sims = np.einsum("nd,nkd->nk", x, caps)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)               # most similar first
    _, ids = idx.search(x, 32)
    assert all(set(u) <= set(i) for u, i in zip(used.tolist(), ids.tolist()))
    assert pred.scores.shape == (2, 3)


def test_cli_classify_folder_skips_a_corrupt_image(flickr_index, tmp_path):
    if not CIFAR.is_dir():
        pytest.skip("cifar fixture not present")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("airplane/0000.jpg", "cat/0000.jpg", "ship/0001.jpg"):
        (folder / name.replace("/", "_")).write_bytes((CIFAR / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    classes = tmp_path / "classes.txt"
    classes.write_text("airplane\ncat\nship\ndog\n\n")
    r = CliRunner().invoke(main, ["classify", str(flickr_index), str(folder), "--classes", str(classes),
                                  "--neighbours", "32", "--json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 3 and {d["label"] for d in lines} <= {"airplane", "cat", "ship", "dog"}
    assert all(len(d["image_top3"]) == 3 and len(d["caption_top3"]) == 3 and "w_img" in d for d in lines)
    assert "skipped" in r.stderr and "broken.jpg" in r.stderr and "classified 3 images (1 skipped)" in r.stderr
    table = CliRunner().invoke(main, ["classify", str(flickr_index), str(folder / "airplane_0000.jpg"),
                                      "--classes", str(classes), "--method", "image", "--no-progress"])
    assert table.exit_code == 0 and "image:" in table.stdout and "->" in table.stdout


def test_cli_eval_prints_retrieval_and_classification_tables(flickr_index, tmp_path):
    labels = _subset(CIFAR, tmp_path, per_class=3)
    r = CliRunner().invoke(main, ["eval", str(flickr_index), "--labels", str(labels), "--neighbours", "32"])
    assert r.exit_code == 0, r.output
    for text in ("Retrieval recall", "text→image", "image→text", "nnn", "hybrid", "Classification of 30 images",
                 "zero-shot CLIP", "X-MoRe (official stream weights)"):
        assert text in r.stdout
    j = CliRunner().invoke(main, ["eval", str(flickr_index), "--json", "--max-queries", "200", "--seed", "3"])
    out = json.loads(j.stdout)
    rows = {(d["direction"], d["method"]): d for d in out["retrieval"]}
    assert len(rows) == 8 and all(d["queries"] == 200 for d in rows.values())
    assert rows[("text→image", "clip")]["R@5"] >= 0.6
    again = json.loads(CliRunner().invoke(main, ["eval", str(flickr_index), "--json", "--max-queries", "200",
                                                 "--seed", "3"]).stdout)
    assert again["retrieval"] == [{**d, "seconds": again["retrieval"][i]["seconds"]} for i, d in enumerate(out["retrieval"])]


def test_class_and_label_files_bad_input(tmp_path, flickr_index):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="is empty"):
        read_classes(empty)
    with pytest.raises(ValueError, match="duplicate class names: cat"):
        check_classes(["cat", "dog", " cat"])
    bad = tmp_path / "labels.csv"
    bad.write_text("file,y\na.jpg,cat\n")
    with pytest.raises(ValueError, match="'path' and 'label'"):
        read_labels(bad)
    with pytest.raises(ValueError, match="no such image"):
        expand_images([tmp_path / "nope.jpg"])
    runner = CliRunner()
    r = runner.invoke(main, ["classify", str(flickr_index), str(tmp_path), "--classes", str(empty)])
    assert r.exit_code == 2 and "is empty" in r.output
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ndog\ncat\n")
    r = runner.invoke(main, ["classify", str(flickr_index), str(tmp_path), "--classes", str(dup)])
    assert r.exit_code == 2 and "duplicate class names" in r.output
    make_image(tmp_path / "a.png")
    labels = tmp_path / "ok.csv"
    labels.write_text("path,label\na.png,zebra\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    r = runner.invoke(main, ["eval", str(flickr_index), "--labels", str(labels), "--classes", str(classes)])
    assert r.exit_code == 2 and "labels not among the classes: zebra" in r.output
    r = runner.invoke(main, ["classify", str(flickr_index), str(tmp_path / "a.png")])
    assert r.exit_code == 2 and "--classes FILE or --labels FILE" in r.output


def test_index_without_caption_embeddings_is_refused(tiny_clip, tmp_path):
    from retrieval import build_from_embeddings

    rng = np.random.default_rng(0)
    img = rng.standard_normal((200, tiny_clip.identity["embed_dim"])).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    build_from_embeddings(tmp_path / "idx", img, np.zeros_like(img), dict(tiny_clip.identity), bias_bank=None)
    clf = Classifier(open_index(tmp_path / "idx", tiny_clip), ["cat", "dog"], neighbours=8, captions=4)
    with pytest.raises(IndexFolderError, match="no caption embeddings"):
        clf.predict(img[:2])


def test_calibration_means_make_weights_independent_of_the_batch(flickr_index, tiny_clip, tmp_path):
    paths, labels = read_labels(_subset(CIFAR, tmp_path, per_class=2))
    clf = Classifier(open_index(flickr_index, tiny_clip), sorted(set(labels)), neighbours=32)
    means = clf.calibration_means(paths[10:])
    assert 0 < means[0] < 1 and 0 < means[1] < 1
    alone = clf.classify(paths[:1], means=means)[0]
    together = clf.classify(paths[:5], means=means)[0]
    assert (alone.w_img, alone.w_cap) == (together.w_img, together.w_cap)
    assert clf.classify(paths[:1])[0].w_img == 1.0        # batch of one without calibration: mean = itself
    folder = tmp_path / "cal"
    folder.mkdir()
    for i, p in enumerate(paths[10:14]):
        (folder / f"{i}_{p.name}").write_bytes(p.read_bytes())
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(sorted(set(labels))))
    r = CliRunner().invoke(main, ["classify", str(flickr_index), str(paths[0]), "--classes", str(classes),
                                  "--calibration", str(folder), "--json", "--neighbours", "32"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["w_img"] != 1.0


def _split(src, tmp_path, support: int, query: int):
    """Two labels.csv files: the first ``support`` images of each class, then the next ``query``."""
    with open(src / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen: dict = {}
    parts: dict = {"support": [], "query": []}
    for r in rows:
        i = seen.get(r["label"], 0)
        seen[r["label"]] = i + 1
        if i < support + query:
            parts["support" if i < support else "query"].append({"path": str(src / r["path"]), "label": r["label"]})
    out = {}
    for name, keep in parts.items():
        out[name] = tmp_path / f"{name}.csv"
        with open(out[name], "w", newline="") as f:
            w = csv.DictWriter(f, ["path", "label"])
            w.writeheader()
            w.writerows(keep)
    return out["support"], out["query"]


def test_classify_with_a_labelled_support_set_uses_gda(flickr_index, tiny_clip, tmp_path):
    """`classify --support`: 16 labelled CIFAR photos per class lift the fixture CLIP's zero-shot."""
    if not (CIFAR / "labels.csv").exists():
        pytest.skip("cifar10_test_1k not present")
    support, query = _split(CIFAR, tmp_path, 16, 24)
    r = CliRunner().invoke(main, ["classify", str(flickr_index), "--labels", str(query), "--method", "image",
                                  "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    zero = float(r.stderr.split("accuracy ")[1].split()[0])
    r = CliRunner().invoke(main, ["classify", str(flickr_index), "--labels", str(query), "--support", str(support),
                                  "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "GDA on 160 support images" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 240 and all(len(x["top3"]) == 3 and "truth" in x for x in rows)
    gda = float(r.stderr.split("accuracy ")[1].split()[0])
    assert gda >= zero + 0.08, (zero, gda)  # measured 0.458 -> 0.600
    r = CliRunner().invoke(main, ["classify", str(flickr_index), str(CIFAR / "cat"), "--support", str(support),
                                  "--classes", str(tmp_path / "nope.txt")])
    assert r.exit_code == 2
