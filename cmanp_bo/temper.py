"""A model whose posterior std is scaled by a constant: a diagnostic of over- and under-confidence.

``TemperedModel(model, std_scale)`` keeps ``model``'s posterior mean and multiplies its
covariance by ``std_scale ** 2``. With ``std_scale < 1`` an acquisition explores less and
exploits more, as it would on a more confident model. It exists to test a diagnosis (is the
network's posterior too wide for BO on a given problem class?), not as a tuned default: a scale
chosen on the benchmark problems would be tuned to the test set (see the README, issue 6).
``heldout_std_scale`` estimates a scale from a run's own data instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from botorch.models.model import Model
from torch import Tensor

from cmanp_bo.anchor import LatentWrapper


def check_std_scale(std_scale: float) -> float:
    """``std_scale`` as a float; ``ValueError`` unless a positive finite number (not a bool)."""
    if (
        isinstance(std_scale, bool)
        or not isinstance(std_scale, (int, float))
        or not 0 < std_scale < float("inf")
    ):
        raise ValueError(f"std_scale must be a positive finite number, got {std_scale!r}")
    return float(std_scale)


class TemperedModel(LatentWrapper):
    """``model``'s latent posterior with its std multiplied by ``std_scale``."""

    def __init__(self, model: Model, std_scale: float) -> None:
        super().__init__(model)
        self.std_scale = check_std_scale(std_scale)

    def _moments(self, X: Tensor) -> tuple[Tensor, Tensor]:
        mvn = self.base.posterior(X).distribution
        return mvn.mean, mvn.covariance_matrix * self.std_scale**2


def heldout_std_scale(
    build: Callable[[Tensor, Tensor], Model],
    X: Tensor,
    Y: Tensor,
    holdout: int,
    bounds: tuple[float, float] = (0.1, 3.0),
) -> float:
    """A std scale estimated from the data, not chosen on a benchmark: the model built (``build``)
    on all but the last ``m = min(holdout, n // 4)`` observations predicts those ``m``
    (noise included), and the scale is the root mean square of their z-scores, clipped to
    ``bounds``: 1 for a calibrated model, below 1 for one whose intervals are too wide. In a BO
    loop the last observations are the latest proposals, so it measures calibration where the
    acquisition looks. ``1.0`` when ``m < 1``."""
    if X.dim() != 2 or Y.shape != (X.shape[0], 1):
        raise ValueError(f"X must be n x d and Y n x 1, got {tuple(X.shape)}, {tuple(Y.shape)}")
    m = min(holdout, X.shape[0] // 4)
    if m < 1:
        return 1.0
    model = build(X[:-m], Y[:-m])
    with torch.no_grad():
        post = model.posterior(X[-m:].unsqueeze(-2), observation_noise=True)
        z = (Y[-m:, 0] - post.mean.reshape(-1)) / post.variance.reshape(-1).clamp_min(1e-12).sqrt()
    return float(z.pow(2).mean().sqrt().clamp(*bounds))
