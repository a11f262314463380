"""A TuRBO-1 trust region for any surrogate, with the model fitted in the region's own frame.

Eriksson et al. (NeurIPS 2019), TuRBO-1 with its published rules: a box of side ``L`` centred on
the incumbent (the best observation), ``L`` starting at 0.8 of the unit cube; doubled (up to 1.6)
after 3 consecutive improvements, halved after ``max(4, d)`` consecutive failures, and reset to
0.8 when it falls below ``0.5**7`` (TuRBO restarts with a fresh design; here the data are kept).
An improvement is a value below ``best - 1e-3 |best|``. The box is a cube (TuRBO stretches it by
a GP's lengthscales; a network has none, and the GP control gets the same cube).

What differs from TuRBO is the frame: the model sees only the points in a box around the
incumbent (the trust region, or the cube around the incumbent holding the ``min_context``
nearest points if the region holds fewer), mapped affinely onto ``[0, 1]^d``, and its outcomes
are standardised (or warped) there. A network trained on functions of the unit cube then sees the
basin at the scale it was trained on, instead of as a small wiggle that its noise explains away
(README, issue 6: its posterior mean around the incumbent is what loses to the GP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Frame:
    """The model's view of one step: the context points in local coordinates, their outcomes,
    the trust region in local coordinates and the affine map back to the unit cube."""

    X: Tensor  # m x d local coordinates in [0, 1]^d
    y: Tensor  # m outcomes
    bounds: Tensor  # 2 x d: the trust region, local coordinates
    lower: Tensor  # d: the context box in the unit cube
    width: Tensor  # d

    def to_global(self, x: Tensor) -> Tensor:
        return (self.lower + x * self.width).clamp(0, 1)


class TrustRegion:
    """TuRBO-1's side-length schedule; ``observe`` it with every new point, then ``frame``."""

    def __init__(
        self,
        dim: int,
        length_init: float = 0.8,
        length_min: float = 0.5**7,
        length_max: float = 1.6,
        success_tolerance: int = 3,
        failure_tolerance: int | None = None,
        min_context: int | None = None,
    ) -> None:
        if not 0 < length_min <= length_init <= length_max:
            raise ValueError(
                f"need 0 < length_min <= length_init <= length_max, got "
                f"{length_min}, {length_init}, {length_max}"
            )
        self.dim = dim
        self.length_init, self.length_min, self.length_max = length_init, length_min, length_max
        self.success_tolerance = success_tolerance
        self.failure_tolerance = failure_tolerance or max(4, dim)
        self.min_context = min_context or max(5, 2 * dim)  # Ax's initial design size
        self.length = length_init
        self.successes = self.failures = self.restarts = 0
        self.best = math.inf
        self.seen = 0

    def observe(self, y: Tensor) -> None:
        """Update the schedule with the points of ``y`` (all outcomes so far) not seen before.
        The first call takes the initial design as it is."""
        if y.dim() != 1:
            raise ValueError(f"y must be a vector, got shape {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("y must be finite (no NaN or inf)")
        if y.shape[0] < self.seen:
            raise ValueError(f"y has {y.shape[0]} points, {self.seen} were seen before")
        if self.seen == 0:
            self.best, self.seen = float(y.min()), y.shape[0]
            return
        for value in y[self.seen :].tolist():
            if value < self.best - 1e-3 * abs(self.best):
                self.successes, self.failures = self.successes + 1, 0
            else:
                self.successes, self.failures = 0, self.failures + 1
            self.best = min(self.best, value)
            if self.successes == self.success_tolerance:
                self.length, self.successes = min(2 * self.length, self.length_max), 0
            if self.failures == self.failure_tolerance:
                self.length, self.failures = self.length / 2, 0
            if self.length < self.length_min:
                self.length, self.restarts = self.length_init, self.restarts + 1
        self.seen = y.shape[0]

    def frame(self, X: Tensor, y: Tensor) -> Frame:
        """The context and the trust region of this step (``X``: ``n x d`` in the unit cube)."""
        if X.dim() != 2 or X.shape[-1] != self.dim or y.shape != X.shape[:1]:
            raise ValueError(
                f"need X n x {self.dim} and y of n, got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        if X.shape[0] == 0 or not (torch.isfinite(X).all() and torch.isfinite(y).all()):
            raise ValueError("need at least one point, and finite X and y (no NaN or inf)")
        center = X[y.argmin()]
        distance = (X - center).abs().amax(dim=-1)  # the cube's norm
        k = min(self.min_context, X.shape[0])
        half = max(self.length / 2, distance.kthvalue(k).values.item())
        lower = (center - half).clamp(0, 1)
        upper = (center + half).clamp(0, 1)
        width = (upper - lower).clamp_min(1e-12)
        inside = ((X >= lower) & (X <= upper)).all(dim=-1)
        tr_lower = (center - self.length / 2).clamp(0, 1)
        tr_upper = (center + self.length / 2).clamp(0, 1)
        bounds = torch.stack([(tr_lower - lower) / width, (tr_upper - lower) / width]).clamp(0, 1)
        return Frame(
            X=((X[inside] - lower) / width).clamp(0, 1),
            y=y[inside],
            bounds=bounds,
            lower=lower,
            width=width,
        )
