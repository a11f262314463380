"""Comparable BO surrogates behind one interface, chosen by name.

Every surrogate proposes the next point of a minimisation on ``[0, 1]^d`` from all data so far:
``surrogate.ask(X, y) -> x`` (``n x d``, ``n`` -> ``d``). The model-based ones share everything but
the model: qLogNEI on the negated outcome, ``optimize_acqf(q=1, num_restarts, raw_samples)`` with
the same settings, the same seeds. A surrogate object lives for one run, so the stateful ones
(``gp-cheap``, ``cmanp``) absorb only the points added since the previous call.

Names: ``sobol``, ``gp`` (Ax's default: SingleTaskGP refit every step), ``gp-cheap`` (refit every
``refit_every`` steps, ``condition_on_observations`` between), ``cmanp`` (the shipped checkpoint or
``checkpoint=``), ``tnp`` and ``lbanp`` (the neural peers: their shipped checkpoints, or
``checkpoint=``).

``gp``, ``cmanp``, ``tnp`` and ``lbanp`` take ``warp="rank"``: the model and the acquisition work
on the Gaussian copula transform of ``-y`` (``cmanp_bo.warp``), rebuilt from all points at every
step. The network surrogates also take ``warp="auto"``: the warp their network's model card
recommends (its ``warp`` entry; none without one), the standard and quick suites' default for
``cmanp``. ``cmanp`` and the peers also take three diagnostic options, off by default:
``anchor=k`` (the posterior conditioned exactly on the ``k`` best observations,
``cmanp_bo.anchor``; noise-free objectives only), ``std_scale=s`` and ``calibrate=m`` (a scaled
posterior std, ``cmanp_bo.temper``). None helped on the standard suite (README, issue 6).

``gp``, ``cmanp`` and the peers take ``trust_region=True`` (``cmanp_bo.trust``): TuRBO-1's
trust region around the incumbent; the model is built on the region's points in the region's
own frame and the acquisition is optimised inside it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.models.model import Model
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor

from cmanp_bo.acquisition import DEFAULT_MAX_BASELINE, best_baseline
from cmanp_bo.temper import check_std_scale
from cmanp_bo.trust import Frame, TrustRegion
from cmanp_bo.warp import check_warp, warp_outcomes


@dataclass
class AcquisitionOptions:
    """The acquisition settings every model-based surrogate shares (stored with each run)."""

    num_restarts: int = 10
    raw_samples: int = 512
    mc_samples: int = 128
    max_baseline: int = DEFAULT_MAX_BASELINE  # qLogNEI baseline (cmanp_bo.acquisition)


class Surrogate:
    """Base class: ``ask(X, y)`` returns the next point (``d``) for minimising ``y``."""

    name = "base"

    def __init__(self, dim: int, seed: int, acquisition: AcquisitionOptions | None = None) -> None:
        self.dim, self.seed = dim, seed
        self.acq = acquisition or AcquisitionOptions()
        self.calls = 0
        self.trust: TrustRegion | None = None  # set by the surrogates that take trust_region
        self.lengths: list[float] = []  # the trust region's side at each step

    def ask(self, X: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    # shared by the model-based surrogates
    def acquisition(self, model: Model, X: Tensor) -> qLogNoisyExpectedImprovement:
        """The acquisition every model-based surrogate optimises: qLogNEI (of the negated
        outcome: ``model`` is built on ``-y``) on the ``max_baseline`` best observed points."""
        baseline = best_baseline(model, X, self.acq.max_baseline)
        return qLogNoisyExpectedImprovement(
            model,
            X_baseline=baseline,
            sampler=SobolQMCNormalSampler(torch.Size([self.acq.mc_samples])),
            prune_baseline=True,
        )

    def _optimize(self, model: Model, X: Tensor, y: Tensor, bounds: Tensor | None = None) -> Tensor:
        torch.manual_seed(self.seed * 100_003 + self.calls)
        self.calls += 1
        acqf = self.acquisition(model, X)
        if bounds is None:
            bounds = torch.stack([torch.zeros(self.dim), torch.ones(self.dim)])
        bounds = bounds.to(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optimizer restarts and non-convergence notes
            cand, _ = optimize_acqf(
                acqf,
                bounds=bounds,
                q=1,
                num_restarts=self.acq.num_restarts,
                raw_samples=self.acq.raw_samples,
            )
        return cand[0].detach()

    def _trust_frame(self, X: Tensor, y: Tensor) -> Frame | None:
        """This step's trust-region frame (``trust_region=True``), else ``None``."""
        if self.trust is None:
            return None
        self.trust.observe(y)
        self.lengths.append(self.trust.length)
        return self.trust.frame(X, y)

    def _propose(self, model: Model, X: Tensor, y: Tensor, frame: Frame | None) -> Tensor:
        """``_optimize`` on the unit cube, or inside ``frame``'s region and mapped back."""
        if frame is None:
            return self._optimize(model, X, y)
        return frame.to_global(self._optimize(model, X, y, frame.bounds))


def _check_trust(trust_region: bool, dim: int) -> TrustRegion | None:
    if not isinstance(trust_region, bool):
        raise ValueError(f"trust_region must be true or false, got {trust_region!r}")
    return TrustRegion(dim) if trust_region else None


class SobolSurrogate(Surrogate):
    """Quasi-random search: the continuation of the scrambled Sobol sequence of the run's seed."""

    name = "sobol"

    def ask(self, X: Tensor, y: Tensor) -> Tensor:
        engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=self.seed)
        return engine.draw(X.shape[0] + 1, dtype=torch.float64)[-1]


def _fit_gp(X: Tensor, y: Tensor, warp: str | None = None) -> Model:
    """A SingleTaskGP fitted to ``-y`` (or its ``warp``) with BoTorch's defaults."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    # BoTorch defaults: Standardize, dimension-scaled lengthscale prior
    model = SingleTaskGP(X, warp_outcomes(-y, warp)[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


class GPSurrogate(Surrogate):
    """Ax's default: a SingleTaskGP with BoTorch's priors, refit on all data at every step
    (``warp="rank"``: on the copula transform of the outcomes)."""

    name = "gp"

    def __init__(
        self,
        dim: int,
        seed: int,
        acquisition=None,
        warp: str | None = None,
        trust_region: bool = False,
    ) -> None:
        super().__init__(dim, seed, acquisition)
        check_warp(warp)
        self.warp = warp
        self.trust = _check_trust(trust_region, dim)

    def ask(self, X: Tensor, y: Tensor) -> Tensor:
        frame = self._trust_frame(X, y)
        if frame is not None:  # the model sees the region's points, in its frame
            X, y = frame.X, frame.y
        return self._propose(_fit_gp(X, y, self.warp), X, y, frame)


class CheapGPSurrogate(Surrogate):
    """A GP refit every ``refit_every`` steps that absorbs the points in between with
    ``condition_on_observations`` (hyperparameters fixed; an O(n^2) rank update)."""

    name = "gp-cheap"

    def __init__(self, dim: int, seed: int, acquisition=None, refit_every: int = 10) -> None:
        super().__init__(dim, seed, acquisition)
        self.refit_every = refit_every
        self.model: Model | None = None
        self.seen = 0
        self.steps_since_fit = 0

    def ask(self, X: Tensor, y: Tensor) -> Tensor:
        if self.model is None or self.steps_since_fit >= self.refit_every:
            self.model, self.steps_since_fit = _fit_gp(X, y), 0
        elif X.shape[0] > self.seen:
            new = slice(self.seen, None)
            self.model = self.model.condition_on_observations(X[new], -y[new, None])
        self.seen = X.shape[0]
        self.steps_since_fit += 1
        return self._optimize(self.model, X, y)


class HypothesisGPSurrogate(Surrogate):
    """``cmanp_bo.hypothesis_gp.HypothesisAveragedGP``: exact GP regression averaged over
    fixed lengthscale hypotheses, rebuilt from all points at each step; nothing is fitted.
    ``warp="rank"``: on the copula transform of the outcomes, as the other surrogates."""

    name = "hyp-gp"

    def __init__(
        self,
        dim: int,
        seed: int,
        acquisition=None,
        hypotheses: int = 256,
        short_share: float = 0.5,
        warp: str | None = None,
    ) -> None:
        super().__init__(dim, seed, acquisition)
        check_warp(warp)
        if isinstance(hypotheses, bool) or not isinstance(hypotheses, int) or hypotheses < 1:
            raise ValueError(f"hypotheses must be a positive integer, got {hypotheses!r}")
        if not 0.0 <= short_share <= 1.0:
            raise ValueError(f"short_share must be in [0, 1], got {short_share!r}")
        self.hypotheses, self.short_share, self.warp = hypotheses, float(short_share), warp

    def ask(self, X: Tensor, y: Tensor) -> Tensor:
        from cmanp_bo.hypothesis_gp import HypothesisAveragedGP

        model = HypothesisAveragedGP(
            X,
            warp_outcomes(-y, self.warp)[:, None],
            hypotheses=self.hypotheses,
            short_share=self.short_share,
        )
        return self._optimize(model, X, y)


class NeuralProcessSurrogate(Surrogate):
    """A pretrained neural process (``CMANPModel``): conditions in context, nothing is fitted.

    The model is built once from the initial design and then absorbs each new point with
    ``condition_on_observations`` (constant cost for CMANP; the peers re-encode their context).
    ``cache_baseline`` is ``CMANPModel``'s (qLogNEI's baseline decoded and factorised once per
    step).

    ``warp="rank"``: the model is built at every step from all points, on the copula transform
    of ``-y`` (``cmanp_bo.warp``: each new point changes the warped value of every old one), and
    the acquisition works on that scale.

    ``anchor=k`` (``k > 0``): the acquisition sees ``cmanp_bo.anchor.AnchoredModel``, the
    posterior conditioned on ``f = y`` at the ``k`` best observations (on the warp's scale).
    ``std_scale=s``: its posterior std is multiplied by ``s`` (``cmanp_bo.temper``; a
    diagnostic, not a tuned setting). ``calibrate=m``: the std is scaled at each step by
    ``cmanp_bo.temper.heldout_std_scale`` on the last ``m`` points (times ``std_scale``).
    """

    name = "cmanp"

    def __init__(
        self,
        dim: int,
        seed: int,
        acquisition=None,
        checkpoint="default",
        cache_baseline: bool = True,
        warp: str | None = None,
        anchor: int = 0,
        std_scale: float = 1.0,
        calibrate: int = 0,
        trust_region: bool = False,
    ) -> None:
        super().__init__(dim, seed, acquisition)
        warp = resolve_warp(warp, checkpoint, dim)
        self.trust = _check_trust(trust_region, dim)
        if isinstance(anchor, bool) or not isinstance(anchor, int) or anchor < 0:
            raise ValueError(f"anchor must be a non-negative integer, got {anchor!r}")
        self.std_scale = check_std_scale(std_scale)
        if isinstance(calibrate, bool) or not isinstance(calibrate, int) or calibrate < 0:
            raise ValueError(f"calibrate must be a non-negative integer, got {calibrate!r}")
        self.calibrate = calibrate
        self.scales: list[float] = []  # the held-out std scales, one per step (calibrate > 0)
        self.checkpoint = checkpoint
        self.cache_baseline = cache_baseline
        self.warp = warp
        self.anchor = anchor
        self.model: Model | None = None
        self.seen = 0

    def _build(self, X: Tensor, Y: Tensor) -> Model:
        from cmanp_bo import CMANPModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # untrained-placeholder notice
            return CMANPModel(X, Y, checkpoint=self.checkpoint, cache_baseline=self.cache_baseline)

    def ask(self, X: Tensor, y: Tensor) -> Tensor:
        frame = self._trust_frame(X, y)
        if frame is not None:  # the model sees the region's points, in its frame
            X, y = frame.X, frame.y
        Y = warp_outcomes(-y, self.warp)[:, None]
        if self.warp is not None or self.model is None or frame is not None:
            # a warp changes every old point; a trust region changes the frame
            self.model = self._build(X, Y)
        elif X.shape[0] > self.seen:
            new = slice(self.seen, None)
            self.model = self.model.condition_on_observations(X[new], Y[new])
        self.seen = X.shape[0]
        model = self.model
        if self.anchor:
            from cmanp_bo.anchor import AnchoredModel

            model = AnchoredModel(model, X, Y, k=self.anchor)
        scale = self.std_scale
        if self.calibrate:
            from cmanp_bo.temper import heldout_std_scale

            self.scales.append(heldout_std_scale(self._build, X, Y, self.calibrate))
            scale *= self.scales[-1]
        if scale != 1.0:
            from cmanp_bo.temper import TemperedModel

            model = TemperedModel(model, scale)
        return self._propose(model, X, y, frame)


class PeerSurrogate(NeuralProcessSurrogate):
    """A neural peer (``tnp`` or ``lbanp``) trained on the same prior with CMANP's budget.

    Without ``checkpoint=`` it loads the shipped peer of its architecture whose model card covers
    ``dim`` (``cmanp_bo.pretrained.default_bo_name(dim, arch)``); there is none beyond the
    dimensions a peer was trained for, and then it fails with the way to pass one.
    """

    def __init__(
        self,
        dim: int,
        seed: int,
        acquisition=None,
        checkpoint=None,
        cache_baseline: bool = True,
        warp: str | None = None,
        anchor: int = 0,
        std_scale: float = 1.0,
        calibrate: int = 0,
        trust_region: bool = False,
    ) -> None:
        if checkpoint is None:
            checkpoint = default_checkpoint(self.name, dim)
        if checkpoint is None:
            raise ValueError(
                f"no shipped {self.name!r} checkpoint covers d={dim}: pass "
                f'--surrogate-options \'{{"{self.name}": {{"checkpoint": "PATH.pt"}}}}\' '
                f"(train one with `python experiments/train_bo_checkpoints.py --arch {self.name} "
                f"...` or `cmanp-bo train --arch {self.name} ...`)"
            )
        super().__init__(
            dim,
            seed,
            acquisition,
            checkpoint,
            cache_baseline,
            warp,
            anchor,
            std_scale,
            calibrate,
            trust_region,
        )


#: ``warp=AUTO_WARP``: the warp the network's model card recommends (``recommended_warp``)
AUTO_WARP = "auto"


def resolve_warp(warp: str | None, checkpoint, dim: int) -> str | None:
    """``warp`` itself (checked), or for ``"auto"`` the warp ``checkpoint``'s model card
    recommends for ``dim`` inputs (``cmanp_bo.pretrained.recommended_warp``; a network
    instance has no card: ``None``)."""
    if warp == AUTO_WARP:
        from cmanp_bo.pretrained import recommended_warp

        if checkpoint is None or not isinstance(checkpoint, (str, os.PathLike)):
            return None
        warp = recommended_warp(checkpoint, dim)
    check_warp(warp)
    return warp


def default_checkpoint(surrogate: str, dim: int) -> str | None:
    """What a network surrogate loads without ``checkpoint=``: ``"default"`` (CMANP's per-d
    routing) for ``cmanp``, the shipped peer covering ``dim`` for ``tnp`` / ``lbanp`` (``None``:
    none is shipped)."""
    from cmanp_bo.pretrained import default_bo_name

    return "default" if surrogate == "cmanp" else default_bo_name(dim, surrogate)


class TNPSurrogate(PeerSurrogate):
    name = "tnp"


class LBANPSurrogate(PeerSurrogate):
    name = "lbanp"


SURROGATES: dict[str, type[Surrogate]] = {
    cls.name: cls
    for cls in (
        SobolSurrogate,
        GPSurrogate,
        CheapGPSurrogate,
        HypothesisGPSurrogate,
        NeuralProcessSurrogate,
        TNPSurrogate,
        LBANPSurrogate,
    )
}


def make_surrogate(
    name: str,
    dim: int,
    seed: int,
    acquisition: AcquisitionOptions | None = None,
    **options,
) -> Surrogate:
    """The surrogate called ``name`` for one run; ``ValueError`` for an unknown name or option."""
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose from {sorted(SURROGATES)}")
    try:
        return SURROGATES[name](dim, seed, acquisition, **options)
    except TypeError as e:
        raise ValueError(f"bad options {options} for surrogate {name!r}: {e}") from None
