"""The outcome frame: the frozen standardisation of y that a CMANP state is built in.

Shared by the BoTorch model and the meta-training priors, so tasks are trained in exactly the frame
the model uses at inference: the mean and unbiased std of the context outcomes (std 1 for a
single point or a constant outcome, as BoTorch's ``Standardize``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Standard deviations below this are treated as a constant outcome (as BoTorch's Standardize).
MIN_STD = 1e-8


@dataclass(frozen=True)
class OutcomeFrame:
    """Frozen standardisation of the outcomes fed to the network: ``(y - mean) / std``.

    Attributes:
        mean: ``batch_shape`` tensor (outcome-transformed units).
        std: ``batch_shape`` tensor, positive.
        num_points: observations the frame was computed from (drives the re-base schedule).
    """

    mean: Tensor
    std: Tensor
    num_points: int

    @classmethod
    def from_data(cls, Y: Tensor) -> OutcomeFrame:
        """The frame of ``Y`` (``batch_shape x n x 1``): its mean and unbiased std over ``n``.

        A single point or a constant outcome gets ``std = 1`` (as BoTorch's ``Standardize``).
        """
        y = Y.squeeze(-1)
        mean = y.mean(dim=-1)
        if y.shape[-1] < 2:
            std = torch.ones_like(mean)
        else:
            std = y.std(dim=-1)
            std = torch.where(std >= MIN_STD, std, torch.ones_like(std))
        return cls(mean.detach(), std.detach(), y.shape[-1])

    def apply(self, Y: Tensor) -> Tensor:
        """``batch_shape x n x 1`` outcomes in network units."""
        return (Y - self.mean[..., None, None]) / self.std[..., None, None]
