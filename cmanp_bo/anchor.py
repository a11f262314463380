"""Noise-free anchoring: a model's posterior conditioned exactly on its best observations.

The pretrained networks infer the observation noise from the data in context. On noise-free
objectives they over-estimate it: on the standard suite's histories the d = 3..6 network
predicts a noise std of 0.2-0.3 of the outcomes' std, twice the prior's largest (0.1 of the
signal), and its latent std at the best point so far is 0.26-0.43 of that spread where the
fitted GP's is 0.01-0.08 (``experiments/incumbent_probe.py``). qLogNEI then sees no gain in
refining the incumbent: a nearby point is strongly correlated with it and no more promising.

When the user knows the objective is noise-free (a simulator, a deterministic benchmark),
``AnchoredModel`` adds that knowledge exactly. The network's joint posterior over the ``k``
observed points with the best outcomes (the anchors ``A``) and the query points ``Z`` is a
Gaussian; conditioning it on ``f(A) = Y_A`` gives

    mean_Z = m_Z + K_ZA K_AA^-1 (Y_A - m_A),    cov_Z = K_ZZ - K_ZA K_AA^-1 K_AZ,

so the posterior interpolates the anchors and its std vanishes there, as a noise-free GP's does.
The cost is one joint decode of ``k + q`` points and a ``k x k`` factorisation per batch
element, independent of the number of observations. For noisy data this double-counts the
anchors (the network has already conditioned on them): use it for noise-free objectives only.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

DEFAULT_ANCHORS = 16
JITTER = 1e-6  # relative to the anchors' mean prior variance: a near-exact constraint


class LatentWrapper(Model):
    """A single-output model that transforms another model's latent joint posterior; the
    subclasses implement ``_moments(X) -> (mean, covariance)``."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        if model.num_outputs != 1:
            raise UnsupportedError(
                f"{type(self).__name__} needs one output, got {model.num_outputs}"
            )
        self.base = model

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return self.base.batch_shape

    def _moments(self, X: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: Any = None,
        **kwargs: Any,
    ) -> GPyTorchPosterior:
        """Latent joint posterior at ``X`` (``batch_shape x q x d``)."""
        if output_indices is not None and list(output_indices) != [0]:
            raise UnsupportedError(f"one output; got output_indices={output_indices}")
        if observation_noise is not False:
            raise UnsupportedError(f"{type(self).__name__} gives the latent posterior only")
        posterior = GPyTorchPosterior(MultivariateNormal(*self._moments(X)))
        if posterior_transform is not None:
            return posterior_transform(posterior=posterior, X=X)
        return posterior

    def condition_on_observations(self, X: Tensor, Y: Tensor, **kwargs: Any) -> Model:
        raise UnsupportedError(
            f"{type(self).__name__} does not absorb observations: wrap the updated base model"
        )


class AnchoredModel(LatentWrapper):
    """``model``'s latent posterior conditioned on ``f(x) = y`` at the ``k`` observations with
    the highest ``y`` (BoTorch maximises).

    Example:
        >>> base = CMANPModel(train_X, train_Y)
        >>> model = AnchoredModel(base, train_X, train_Y, k=16)
        >>> acqf = qLogNoisyExpectedImprovement(model, X_baseline=train_X)
    """

    def __init__(self, model: Model, train_X: Tensor, train_Y: Tensor, k: int = DEFAULT_ANCHORS):
        """
        Args:
            model: a single-output model with a joint posterior (``CMANPModel``, a GP, ...).
            train_X: ``n x d`` observed inputs, as ``model`` takes them.
            train_Y: ``n x 1`` their outcomes, in ``model``'s outcome units (a warped model:
                the warped outcomes).
            k: how many of the best observations to anchor (all if fewer).
        """
        super().__init__(model)
        if train_X.dim() != 2 or train_Y.shape != (train_X.shape[0], 1):
            raise ValueError(
                f"train_X must be n x d and train_Y n x 1, got {tuple(train_X.shape)} and "
                f"{tuple(train_Y.shape)}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not (torch.isfinite(train_X).all() and torch.isfinite(train_Y).all()):
            raise ValueError("train_X and train_Y must be finite")
        best = train_Y[:, 0].topk(min(k, train_Y.shape[0])).indices.sort().values
        self.anchor_X, self.anchor_Y = train_X[best], train_Y[best, 0]

    def _moments(self, X: Tensor) -> tuple[Tensor, Tensor]:
        k = self.anchor_X.shape[0]
        A = self.anchor_X.to(X).expand(*X.shape[:-2], k, X.shape[-1])
        joint = self.base.posterior(torch.cat([A, X], dim=-2)).distribution
        mean, cov = joint.mean, joint.covariance_matrix
        m_a, m_z = mean[..., :k], mean[..., k:]
        K_aa, K_az, K_zz = cov[..., :k, :k], cov[..., :k, k:], cov[..., k:, k:]
        scale = torch.diagonal(K_aa, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        eye = torch.eye(k, dtype=cov.dtype, device=cov.device)
        L = psd_safe_cholesky(K_aa + JITTER * scale[..., None, None] * eye)
        W = torch.cholesky_solve(K_az, L)  # K_aa^-1 K_az: batch x k x q
        resid = (self.anchor_Y.to(mean) - m_a).unsqueeze(-1)  # batch x k x 1
        mean_z = m_z + (W.transpose(-1, -2) @ resid).squeeze(-1)
        cov_z = K_zz - K_az.transpose(-1, -2) @ W
        cov_z = 0.5 * (cov_z + cov_z.transpose(-1, -2))
        floor = 1e-9 * scale[..., None].expand(*cov_z.shape[:-1])
        return mean_z, cov_z + torch.diag_embed(floor)
