"""Soft weight-sharing: the mixture prior against scipy, KL merging by hand, post-processing,
the recipe method, and retraining a digits MLP into a sparser, still accurate model."""

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch import nn

from edgepack.compression import (
    CodebookLinear,
    MixturePrior,
    SwsConv2d,
    SwsError,
    SwsLinear,
    compress,
    load_checkpoint,
    plot_weights,
    postprocess,
    retrain,
    save_checkpoint,
)
from edgepack.compression.sws import kl_gaussian, merge_components, sws_weights
from edgepack.demo import accuracy, digits_mlp, load_digits_split, train_classifier

TAU = 0.05  # the paper's τ
EPOCHS = 10
MAX_NONZERO = 0.5      # post-processed share of non-zero weights in fc1/fc2/head
MAX_ACCURACY_DROP = 0.05


@pytest.fixture(scope="module")
def pretrained(one_thread):
    """A digits MLP (64 hidden units) trained normally, and its data."""
    torch.manual_seed(0)
    data = load_digits_split(seed=0)
    model = train_classifier(digits_mlp(hidden=64), data, epochs=30, seed=0)
    return model, data


def _prior(means, stds, pis) -> MixturePrior:
    """A prior with the given full parameters (component 0 must have mean 0)."""
    means, stds, pis = (np.asarray(a, dtype=np.float64) for a in (means, stds, pis))
    assert means[0] == 0
    logits = np.log(pis[1:] / pis[1:].sum())
    return MixturePrior(means[1:], -2 * np.log(stds), logits, pi_zero=float(pis[0]))


def test_log_prob_and_responsibilities_match_scipy_mixture():
    means, stds, pis = [0.0, -0.3, 0.1, 0.45], [0.02, 0.05, 0.03, 0.1], [0.9, 0.03, 0.05, 0.02]
    prior = _prior(means, stds, pis)
    w = np.concatenate([np.random.default_rng(0).normal(0, 0.2, 500), [3.0, -4.0]])  # far tails
    per_component = stats.norm.logpdf(w[:, None], means, stds) + np.log(pis)
    expected = logsumexp(per_component, axis=1)
    assert np.isfinite(expected).all()
    got = prior.log_prob(torch.tensor(w, dtype=torch.float32))
    np.testing.assert_allclose(float(got.detach()), expected.sum(), rtol=1e-5)
    resp = prior.responsibilities(torch.tensor(w, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(resp, np.exp(per_component - expected[:, None]), atol=1e-5)


def test_log_prob_gradients_match_autograd_of_the_plain_formula():
    torch.manual_seed(0)
    w = torch.cat([torch.randn(400, dtype=torch.float64) * 0.2, torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)])
    prior = MixturePrior.from_weights(w, components=6, pi_zero_prior=(3.0, 2.0)).double()
    with torch.no_grad():
        prior.means.add_(0.01 * torch.randn_like(prior.means))
        prior.log_precisions.add_(torch.randn_like(prior.log_precisions))
    grads = []
    for log_prob in (lambda v: torch.logsumexp(prior.component_log_density(v), dim=1).sum(), prior.log_prob):
        v = w.clone().requires_grad_()
        prior.zero_grad()
        log_prob(v).backward()
        grads.append([v.grad] + [p.grad.clone() for p in prior.parameters()])
    for reference, fused in zip(*grads):
        torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-10)


def test_hyper_prior_differences_match_scipy_gamma_and_beta():
    a = MixturePrior.from_weights(np.linspace(-1, 1, 50), components=5, pi_zero=0.99, pi_zero_prior=(30.0, 2.0))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.log_precisions.add_(torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4]))
        b.zero_logit.sub_(1.0)

    def reference(prior):
        lam = prior.log_precisions.exp().detach().double().numpy()
        pi0 = float(prior.mixing()[0].detach())
        alpha, beta = np.array([5000.0] + [250.0] * 4), np.array([2.0] + [0.1] * 4)
        # the tutorial's form: the Gamma density of λ, learned as γ = log λ without the Jacobian
        return stats.gamma.logpdf(lam, alpha, scale=1 / beta).sum() + stats.beta.logpdf(pi0, 30, 2)

    got = float((a.hyper_log_prob() - b.hyper_log_prob()).detach())
    assert got == pytest.approx(reference(a) - reference(b), rel=1e-4)


def test_kl_merge_by_hand():
    assert kl_gaussian(0.0, 1.0, 1.0, 2.0) == pytest.approx(0.5 * np.log(2))
    # KL(1‖2) = ½(ln 1.02 + 0.0101/0.0102 − 1) ≈ 0.0050 < 0.01; component 0 is far from both.
    groups, means, variances, pis = merge_components(
        [0.0, 0.5, 0.51], [0.01, 0.01, 0.0102], [0.9, 0.06, 0.04], threshold=0.01)
    assert groups == [[0], [1, 2]]
    np.testing.assert_allclose(pis, [0.9, 0.1])
    np.testing.assert_allclose(means, [0.0, (0.06 * 0.5 + 0.04 * 0.51) / 0.1])
    np.testing.assert_allclose(variances, [0.01, (0.06 * 0.01 + 0.04 * 0.0102) / 0.1])
    # 0~1 and 1~2 tie at 0.005 < 0.006: the first pair merges (mean stays exactly 0), then
    # KL(0, 2) = ½·0.02²/0.01 = 0.02 ≥ 0.006, so 2 stays apart (no transitive collapse)
    groups, means, _, pis = merge_components([0.0, 0.01, 0.02], [0.01] * 3, [0.5, 0.3, 0.2], threshold=0.006)
    assert groups == [[0, 1], [2]]
    assert means[0] == 0.0 and pis.tolist() == pytest.approx([0.8, 0.2])


def test_merge_takes_the_closest_pair_and_recomputes():
    # A, B, C at 1.00, 1.01, 1.02 (σ² = 0.01): KL(A,B) = KL(B,C) = 0.005, KL(A,C) = 0.02.
    means, variances, pis = [0.0, 1.0, 1.01, 1.02], [0.01] * 4, [0.2, 0.3, 0.2, 0.3]
    assert kl_gaussian(1.0, 0.01, 1.02, 0.01) == pytest.approx(0.02)
    # A+B merge (mean 1.004); KL(AB, C) = ½·0.016²/0.01 = 0.0128 ≥ 0.006: the chain stays split.
    groups, merged_means, _, merged_pis = merge_components(means, variances, pis, threshold=0.006)
    assert groups == [[0], [1, 2], [3]]
    np.testing.assert_allclose(merged_means, [0.0, 1.004, 1.02])
    np.testing.assert_allclose(merged_pis, [0.2, 0.5, 0.3])
    # with threshold 0.015 the recomputed KL(AB, C) = 0.0128 merges C too, though KL(A, C) = 0.02.
    groups, merged_means, merged_vars, merged_pis = merge_components(means, variances, pis, threshold=0.015)
    assert groups == [[0], [1, 2, 3]]
    np.testing.assert_allclose(merged_means, [0.0, (0.3 * 1.0 + 0.2 * 1.01 + 0.3 * 1.02) / 0.8])
    np.testing.assert_allclose(merged_vars, [0.01, 0.01])
    # unequal variances: the smaller direction decides (KL(1‖2) ≈ 0.0966 < threshold < KL(2‖1) ≈ 0.153)
    assert merge_components([0.0, 1.0, 1.0], [0.01, 0.01, 0.02], [0.5, 0.25, 0.25], 0.1)[0] == [[0], [1, 2]]


def test_postprocess_sets_each_weight_to_its_component_mean(one_thread):
    torch.manual_seed(0)
    model = nn.Sequential(SwsLinear(40, 30), nn.ReLU(), SwsLinear(30, 5))
    means, stds, pis = [0.0, -0.2, 0.15, 0.151], [0.03, 0.02, 0.02, 0.02], [0.97, 0.01, 0.01, 0.01]
    prior = _prior(means, stds, pis)
    before = sws_weights(model).detach().double().numpy()
    report = postprocess(model, prior, kl_threshold=0.01)  # components 2 and 3 merge
    # independent reference: merged mixture by hand, argmax of log πⱼ + log N(w | μⱼ, σⱼ²)
    merged = np.array([0.0, -0.2, 0.1505]), np.array([0.03, 0.02, 0.02]), np.array([0.97, 0.01, 0.02])
    best = (stats.norm.logpdf(before[:, None], merged[0], merged[1]) + np.log(merged[2])).argmax(axis=1)
    expected = merged[0][best].astype(np.float32)
    after = sws_weights(model).detach().numpy()
    np.testing.assert_array_equal(after, expected)
    assert np.all(np.signbit(after[best == 0]) == 0) and (after[best == 0] == 0).all()
    assert [r.components_after for r in report] == [3, 3] and report[0].components_before == 4
    for row, layer in zip(report, (model[0], model[2])):
        assert row.distinct_values == len(torch.unique(layer.weight)) <= 3
        assert row.nonzero == int((layer.weight != 0).sum())
    assert "non-zero" in str(report)


def test_recipe_marks_only_matched_layers(tmp_path, one_thread):
    torch.manual_seed(0)
    dense = digits_mlp(hidden=16)
    marked, _ = compress(dense, {"fc*": {"method": "sws"}})
    assert type(marked.fc1) is SwsLinear and type(marked.fc2) is SwsLinear and type(marked.head) is nn.Linear
    x = torch.rand(5, 64)
    torch.testing.assert_close(marked(x), dense(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown parameters"):
        compress(dense, {"fc*": {"method": "sws", "tau": 0.1}})
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.Flatten(),
                         nn.Linear(64, 2))
    marked_conv, _ = compress(conv, {"0": {"method": "sws"}})
    assert type(marked_conv[0]) is SwsConv2d and type(marked_conv[2]) is nn.Linear
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(marked_conv(image), conv(image), rtol=0, atol=0)
    path = save_checkpoint(marked, tmp_path / "sws.safetensors", builder="edgepack.demo:digits_mlp",
                           builder_kwargs={"hidden": 16}, recipe={"fc*": {"method": "sws"}})
    loaded = load_checkpoint(path)
    assert type(loaded.fc1) is SwsLinear
    torch.testing.assert_close(loaded(x), marked(x), rtol=0, atol=0)


def test_retraining_digits_prunes_half_and_keeps_accuracy(pretrained, tmp_path):
    model, data = pretrained
    base = accuracy(model, data.x_test, data.y_test)
    results = {}
    for tau in (0.0, TAU):  # τ = 0 is the same pipeline with the prior switched off
        marked, _ = compress(model, {"*": {"method": "sws"}})
        before = copy.deepcopy(marked)
        prior, history = retrain(marked, (data.x_train, data.y_train), epochs=EPOCHS, tau=tau,
                                 val_data=(data.x_test, data.y_test), progress=False)
        assert len(history) == EPOCHS and history[-1]["val_accuracy"] == pytest.approx(
            accuracy(marked, data.x_test, data.y_test))
        retrained = copy.deepcopy(marked)
        report = postprocess(marked, prior)
        nonzero = sum(r.nonzero for r in report) / sum(r.weights for r in report)
        results[tau] = nonzero, accuracy(marked, data.x_test, data.y_test)
        assert all(r.distinct_values <= r.components_after <= 17 for r in report)
    nonzero, post_accuracy = results[TAU]
    assert nonzero < MAX_NONZERO and post_accuracy >= base - MAX_ACCURACY_DROP, (results, base)
    assert results[0.0][0] > MAX_NONZERO, results  # without the prior the same bound fails

    postprocess(retrained, prior, codebook=True)
    assert isinstance(retrained.fc1, CodebookLinear)
    torch.testing.assert_close(retrained.fc1.dense_weight(), marked.fc1.weight, rtol=0, atol=0)
    torch.testing.assert_close(retrained(data.x_test), marked(data.x_test), rtol=0, atol=0)

    figure = plot_weights(before, marked, MixturePrior.from_model(before), prior, tmp_path / "sws.png")
    assert figure.stat().st_size > 10_000
    with pytest.raises(SwsError, match="same non-zero number"):
        plot_weights(before, np.zeros(3), prior, prior, tmp_path / "bad.png")
    diverged = sws_weights(marked).detach().numpy().copy()
    diverged[[3, 7]] = np.nan
    with pytest.raises(SwsError, match="2 of the after weights are NaN or infinite"):
        plot_weights(before, diverged, prior, prior, tmp_path / "nan.png")


def test_retrain_is_deterministic_for_a_seed(pretrained):
    model, data = pretrained
    runs = []
    for _ in range(2):
        marked, _ = compress(model, {"fc*": {"method": "sws"}})
        prior, history = retrain(marked, (data.x_train, data.y_train), epochs=2, tau=TAU, seed=3,
                                 pi_zero_prior=(50.0, 2.0), progress=False)
        runs.append((marked.state_dict(), prior.state_dict(), history))
    (w1, p1, h1), (w2, p2, h2) = runs
    assert h1 == h2
    for one, two in ((w1, w2), (p1, p2)):
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert h1[-1]["pi_zero"] != pytest.approx(0.999, abs=1e-7)  # learned under the Beta prior


@pytest.mark.parametrize("kwargs, message", [
    ({"init_std": 0}, r"init_std must be a finite number > 0"),
    ({"init_std": -0.25}, r"init_std must be a finite number > 0"),
    ({"gamma_others": (1.0, 0.1)}, r"gamma_others=\(1.0, 0.1\).*needs α > 1 and β > 0"),
    ({"gamma_zero": (0.5, 2.0)}, r"gamma_zero=\(0.5, 2.0\).*needs α > 1 and β > 0"),
])
def test_prior_initialisation_names_bad_parameters(kwargs, message):
    with pytest.raises(SwsError, match=message):
        MixturePrior.from_weights(torch.linspace(-1, 1, 50), **kwargs)


def test_bad_input_is_named(pretrained):
    model, data = pretrained
    with pytest.raises(SwsError, match="no layer marked"):
        retrain(model, (data.x_train, data.y_train), epochs=1, tau=TAU, progress=False)
    marked, _ = compress(model, {"fc*": {"method": "sws"}})
    with pytest.raises(SwsError, match="tau"):
        retrain(marked, (data.x_train, data.y_train), epochs=1, tau=-1, progress=False)
    with pytest.raises(SwsError, match="prior_lrs"):
        retrain(marked, (data.x_train, data.y_train), epochs=1, tau=TAU, prior_lrs={"mean": 1e-3}, progress=False)
    with pytest.raises(SwsError, match="same non-zero length"):
        retrain(marked, (data.x_train, data.y_train[:5]), epochs=1, tau=TAU, progress=False)
