"""GDA (DESIGN §6): the official estimator pinned by hand, the Bayes rule on a Gaussian toy, the
text prior and cross-validated α, and the lifts on real CLIP features (../shared/data/embeddings)."""
import numpy as np
import pytest

from retrieval import gda_classifier
from retrieval.methods.gda import fit_gda, text_prior
from tests.conftest import SHARED

EMB = SHARED / "data" / "embeddings"
IMAGENET = EMB / "imagenet-vitb32-fewshot-zeroshot"
CIFAR = EMB / "cifar10-vitb32-laion2b-trainshard012"


def test_fit_gda_is_the_official_estimator_written_out():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 4))
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    mu = np.stack([x[y == c].mean(0) for c in range(3)])
    centred = np.concatenate([x[y == c] - mu[c] for c in range(3)])
    cov = np.cov(centred.T)                            # torch's .cov() of the official code: N - 1
    precision = 4 * np.linalg.pinv(8 * cov + np.trace(cov) * np.eye(4))
    W, b = fit_gda(x, y, 3)
    np.testing.assert_allclose(W, mu @ precision, atol=1e-10)
    np.testing.assert_allclose(b, np.log(1 / 3) - 0.5 * np.einsum("cd,de,ce->c", mu, precision, mu), atol=1e-10)
    prior = rng.standard_normal((3, 4))               # the text prior: (n_c mu_c + kappa p_c) / (n_c + kappa)
    W2, _ = fit_gda(x, y, 3, prior, kappa=2.0)
    shrunk = (np.array([3, 2, 4])[:, None] * mu + 2 * prior) / (np.array([3, 2, 4])[:, None] + 2)
    np.testing.assert_allclose(W2, shrunk @ precision, atol=1e-10)


def test_two_gaussians_with_a_shared_covariance_give_the_bayes_rule():
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    means = np.array([[0.0, 0.0], [0.8, -0.3]])
    L = np.linalg.cholesky(cov)
    y = rng.integers(0, 2, 40_000)
    x = means[y] + rng.standard_normal((len(y), 2)) @ L.T
    W, b = fit_gda(x[:20_000], y[:20_000], 2)
    pred = (x[20_000:] @ W.T + b).argmax(1)
    inv = np.linalg.inv(cov)                          # Bayes: equal priors, shared covariance -> LDA
    bayes = (x[20_000:] @ (means @ inv).T - 0.5 * np.einsum("cd,de,ce->c", means, inv, means)).argmax(1)
    assert (pred == bayes).mean() > 0.99
    acc, bayes_acc = (pred == y[20_000:]).mean(), (bayes == y[20_000:]).mean()
    assert abs(acc - bayes_acc) < 0.005


def test_text_prior_carries_text_into_image_space_and_fills_classes_without_support():
    rng = np.random.default_rng(2)
    T = rng.standard_normal((3, 8))
    gap = rng.standard_normal(8) * 3
    x = np.repeat(0.5 * T[:2], 4, axis=0) + gap + 0.01 * rng.standard_normal((8, 8))  # class 2 has no support
    y = np.repeat([0, 1], 4)
    p = text_prior(x, y, T)
    np.testing.assert_allclose(p[:2], x.reshape(2, 4, 8).mean(1), atol=0.05)
    np.testing.assert_allclose(p[2], 0.5 * (T[2] - T[:2].mean(0)) + x.mean(0), atol=0.01)
    with pytest.raises(ValueError, match="no support samples and no prior"):
        fit_gda(x, y, 3)
    clf = gda_classifier(x, y, T, alpha=1.0, kappa=0.0)
    assert np.isfinite(clf.logits(x)).all()


def test_bad_inputs_are_one_line_errors():
    x = np.eye(4)[:3]
    T = np.eye(4)[:2]
    for kw, msg in [(dict(support_labels=np.array([0, 1, 2])), r"in \[0, 2\)"),
                    (dict(support_labels=np.array([0.0, 1.0, 1.0])), "integers"),
                    (dict(class_text_emb=np.eye(3)[:2]), "dim 4, class text embeddings 3"),
                    (dict(support_emb=np.full((3, 4), np.nan)), "NaN"),
                    (dict(logit_scale=-1.0), "logit_scale")]:
        args = {**dict(support_emb=x, support_labels=np.array([0, 1, 1]), class_text_emb=T), **kw}
        with pytest.raises(ValueError, match=msg):
            gda_classifier(**args)


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="real ImageNet CLIP features not present")
def test_imagenet_vitb32_three_shots_beats_zero_shot_and_the_papers_estimator():
    """4-fold: 3 shots per class as support, the 4th as query (1,000 classes, OpenAI ViT-B/32)."""
    X = np.load(IMAGENET / "image_feats_4shot_vitb32.npy").astype(np.float32)
    y = np.load(IMAGENET / "labels_4shot.npy")
    T = np.load(IMAGENET / "zeroshot_classifier_vitb32.npy").astype(np.float32)
    ours, paper, zero = [], [], []
    for f in range(4):
        q = np.arange(len(X)) % 4 == f
        ours.append((gda_classifier(X[~q], y[~q], T).predict(X[q]) == y[q]).mean())
        paper.append((gda_classifier(X[~q], y[~q], T, kappa=0.0).predict(X[q]) == y[q]).mean())
        zero.append(((X[q] @ T.T).argmax(1) == y[q]).mean())
    assert np.mean(zero) == pytest.approx(0.655, abs=1e-3)
    assert np.mean(ours) >= 0.675                       # measured 0.6775 (docs/quality.md)
    assert np.mean(ours) > np.mean(paper) + 0.004       # the paper's estimator, alpha by the same CV: 0.671


@pytest.mark.skipif(not CIFAR.is_dir(), reason="real CIFAR-10 CLIP features not present")
def test_cifar10_sixteen_shots_lifts_bare_name_zero_shot():
    d = np.load(CIFAR / "cifar10_train_shard012_numeric.npz")
    X, Tt, y = d["vision_emb"], d["text_emb"], d["label_ids"]
    T = np.stack([Tt[y == c][0] for c in range(10)])
    accs, zero = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        sup = np.concatenate([rng.choice(np.flatnonzero(y == c), 16, replace=False) for c in range(10)])
        q = np.ones(len(y), bool)
        q[sup] = False
        accs.append((gda_classifier(X[sup], y[sup], T).predict(X[q]) == y[q]).mean())
        zero.append(((X[q] @ T.T).argmax(1) == y[q]).mean())
    assert np.mean(zero) < 0.72 and np.mean(accs) >= 0.92  # measured 0.699 -> 0.941 over 10 seeds
