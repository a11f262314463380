"""best_baseline keeps the points with the best posterior mean under the objective."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.objective import GenericMCObjective, ScalarizedPosteriorTransform
from botorch.models import SingleTaskGP

from cmanp_bo.acquisition import best_baseline


@pytest.fixture
def model_and_X():
    torch.manual_seed(0)
    X = torch.rand(40, 2, dtype=torch.float64)
    Y = (X - 0.5).pow(2).sum(-1, keepdim=True)
    model = SingleTaskGP(X, Y)
    model.eval()
    return model, X


def _means(model, X):
    with torch.no_grad():
        return model.posterior(X.unsqueeze(-2)).mean.reshape(-1)


def test_keeps_the_top_points_by_posterior_mean_in_order(model_and_X):
    model, X = model_and_X
    kept = best_baseline(model, X, 5, chunk=7)  # several chunks
    expected = X[_means(model, X).topk(5).indices.sort().values]
    assert torch.equal(kept, expected)
    # minimising through an objective or a posterior transform flips the choice
    neg = GenericMCObjective(lambda Y, X=None: -Y[..., 0])
    flipped = X[(-_means(model, X)).topk(5).indices.sort().values]
    assert torch.equal(best_baseline(model, X, 5, objective=neg), flipped)
    weights = torch.tensor([-1.0], dtype=torch.float64)
    transform = ScalarizedPosteriorTransform(weights)
    assert torch.equal(best_baseline(model, X, 5, posterior_transform=transform), flipped)


def test_small_sets_unchanged_and_bad_input(model_and_X):
    model, X = model_and_X
    assert best_baseline(model, X[:3], 5) is not None
    assert torch.equal(best_baseline(model, X[:3], 5), X[:3])
    with pytest.raises(ValueError, match="max_points"):
        best_baseline(model, X, 0)
    with pytest.raises(ValueError, match="n x d"):
        best_baseline(model, X[None], 5)
