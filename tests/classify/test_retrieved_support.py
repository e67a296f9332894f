"""Name-only classification (SuS-X style): the class prompts retrieve a pseudo-labelled support set
from the index, and GDA fits on it (classify --support-from-index)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.classify.fewshot import retrieved_support
from retrieval.cli import main
from tests.conftest import SHARED, unit_vectors

EMB = SHARED / "data" / "embeddings"
CIFAR = SHARED / "data" / "cifar10_test_1k"


def _index(tmp_path, img, rows=None):
    rows = rows or [{"key": str(i), "image_path": "", "caption": ""} for i in range(len(img))]
    build_from_embeddings(tmp_path / "idx", img, np.zeros_like(img), {"arch": "synthetic"}, rows, index_key="Flat",
                          bias_bank=None)
    return open_index(tmp_path / "idx")


def test_each_image_goes_to_the_prompt_closest_to_it(tmp_path):
    prompts = unit_vectors(2, 16, 0)
    prompts[1] = prompts[0] + 0.3 * prompts[1]             # two close prompts: their top lists overlap
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    rng = np.random.default_rng(1)
    img = prompts[rng.integers(0, 2, 40)] + 0.3 * rng.standard_normal((40, 16))
    img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
    idx = _index(tmp_path, img)
    sup = retrieved_support(idx, prompts, 15)
    assert sup.rerank == "clip"                              # no bias offsets in this index: plain CLIP
    assert len(set(sup.ids.tolist())) == len(sup.ids) < 30   # overlaps collapsed, each image once
    assert np.array_equal(sup.labels, (img[sup.ids] @ prompts.T).argmax(1))
    assert np.allclose(sup.emb, img[sup.ids], atol=1e-3)
    with pytest.raises(ValueError, match="must be positive"):
        retrieved_support(idx, prompts, 0)


@pytest.mark.skipif(not EMB.is_dir(), reason="real CLIP embeddings not present")
def test_retrieved_support_lifts_zero_shot_on_real_clip_features(tmp_path):
    """CIFAR-10 (open_clip ViT-B-32): half the images as an unlabelled index, the bare class names
    retrieve 8 images each, GDA on them classifies the other half: 0.703 -> 0.93 (docs/quality.md)."""
    from scripts.bench_quality import retrieved_splits
    from retrieval.classify.fewshot import RETRIEVED_ALPHA, RETRIEVED_KAPPA
    from retrieval import gda_classifier

    acc = {}
    for name, f, xi, yi, ci, xq, yq, T in retrieved_splits(EMB):
        if name != "CIFAR-10" or f:
            continue
        unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
        xi, ci, xq, T = unit(xi), unit(ci), unit(xq), unit(T)
        rows = [{"key": str(j), "image_path": "", "caption": ""} for j in range(len(xi))]
        build_from_embeddings(tmp_path / "c", xi, ci, {"arch": "real"}, rows, index_key="Flat", bias_bank="corpus")
        sup = retrieved_support(open_index(tmp_path / "c"), T, 8)
        assert sup.rerank == "nnn" and (yi[sup.ids] == sup.labels).mean() > 0.95
        clf = gda_classifier(sup.emb, sup.labels, T, alpha=RETRIEVED_ALPHA, kappa=RETRIEVED_KAPPA)
        acc = {"zero-shot": ((xq @ T.T).argmax(1) == yq).mean(), "gda": (clf.predict(xq) == yq).mean()}
    assert acc["gda"] >= acc["zero-shot"] + 0.15, acc       # measured 0.929 vs 0.703


def test_cli_support_from_index(flickr_index, tmp_path):
    if not (CIFAR / "labels.csv").exists():
        pytest.skip("cifar10_test_1k not present")
    r = CliRunner().invoke(main, ["classify", str(flickr_index), str(CIFAR / "cat"), "--classes",
                                  str(_classes(tmp_path)), "--support-from-index", "4", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "images retrieved from the index (4 per class, nnn;" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows and all(len(x["top3"]) == 3 for x in rows)
    for args, msg in ((["--support-from-index", "0"], "must be positive, got 0"),
                      (["--support-from-index", "4", "--support", str(tmp_path / "s.csv")], "not both")):
        r = CliRunner().invoke(main, ["classify", str(flickr_index), str(CIFAR / "cat"), "--classes",
                                      str(_classes(tmp_path)), *args])
        assert r.exit_code == 2 and msg in r.output, r.output


def _classes(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("airplane\ncat\ndog\nfrog\nship\n")
    return p
