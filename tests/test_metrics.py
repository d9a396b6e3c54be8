import audmetric
import numpy as np
import pytest
import torch

from helpers.metrics import ccc, ccc_loss, ccc_per_dimension, ccc_report


def test_ccc_matches_an_independent_implementation():
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = rng.normal(size=200)
        prediction = 0.7 * truth + rng.normal(scale=0.5, size=200) + 0.3
        assert ccc(prediction, truth) == pytest.approx(
            audmetric.concordance_cc(truth, prediction), abs=1e-5)


def test_ccc_of_identical_inputs_is_one_and_penalises_shift_and_scale():
    x = torch.linspace(-1, 1, 101)         # mean 0, population variance v
    v = x.var(unbiased=False).item()
    assert ccc(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ccc(x + 1.0, x) == pytest.approx(2 * v / (2 * v + 1), abs=1e-5)  # Pearson r: 1
    assert ccc(2 * x, x) == pytest.approx(0.8, abs=1e-5)                    # 2*2v / (4v + v)


def test_ccc_hand_computed_case():
    # x = [1, 2, 3], y = [2, 4, 6]: cov = 4/3, var x = 2/3, var y = 8/3, (2 - 4)^2 = 4
    assert ccc([1, 2, 3], [2, 4, 6]) == pytest.approx(2 * (4 / 3) / (2 / 3 + 8 / 3 + 4))


def test_ccc_loss_is_one_minus_mean_ccc_and_differentiable():
    prediction = torch.randn(50, 3, requires_grad=True)
    target = torch.randn(50, 3)
    loss = ccc_loss(prediction, target)
    assert loss.item() == pytest.approx(1 - ccc_per_dimension(prediction, target).mean().item())
    loss.backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()
    report = ccc_report(prediction.detach(), target)
    assert set(report) == {"arousal", "valence", "dominance", "mean"}
