"""``CMANPModel``: a pretrained CMANP (or a TNP-D / LBANP peer) as a BoTorch ``Model``.

The network conditions on the observations in context (no fitting) and absorbs new ones with its
update: constant-cost streaming for a CMANP, a re-encoding of the whole context for the peers
(``surrogates.tnp.TNPD``, ``surrogates.lbanp.LBANP``), which share the CMANP's interface and
heads. The posterior is a ``GPyTorchPosterior`` over a
``MultivariateNormal`` whose covariance is joint over the q points (from the network's joint head),
so every BoTorch acquisition function, sampler and posterior transform works with it.

Data flow (per point)::

    X -> input_transform -> pad to the network's dim_x -> net
    Y -> outcome_transform -> outcome frame (frozen standardisation) -> net

The outcome frame is owned by the model: a neural process embeds y non-linearly, so re-scaling old
y would invalidate the absorbed state. The frame stays frozen while points are absorbed and is
re-based (all data re-encoded in a fresh frame) when the number of points has grown by
``rebase_factor`` since the last base: O(n) work every time n doubles, O(1) amortised per point.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.exceptions.errors import InputDataError, UnsupportedError
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.model import FantasizeMixin, Model
from botorch.models.transforms.input import InputTransform
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.posteriors.posterior import Posterior
from botorch.sampling.pathwise.posterior_samplers import DrawMatheronPaths
from botorch.utils.datasets import SupervisedDataset
from gpytorch.distributions import MultivariateNormal
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.models import GP
from linear_operator import to_linear_operator
from linear_operator.operators import CatLinearOperator, DenseLinearOperator, LinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from cmanp_bo.frame import OutcomeFrame
from cmanp_bo.nn import ContextState, NeuralProcess
from cmanp_bo.nn.process import shared_columns

if TYPE_CHECKING:
    from surrogates.reencoding import RawContextState

# Points embedded at a time when (re-)encoding a whole data set: bounds peak memory.
ENCODE_BLOCK = 4096
# Targets decoded jointly at a time; larger q are assembled block by block (the joint head's
# correlations only depend on each target's own features, so blocks of a pair are exact).
JOINT_BLOCK = 4096
# Relative jitter on the function variance: identical points keep correlation 1 - 1e-10, and the
# covariance stays Cholesky-factorizable in float64 without GPyTorch's jitter warnings.
JITTER = 1e-10
# How far outside the unit cube (after the input transform) training inputs may lie unwarned.
UNIT_CUBE_TOLERANCE = 0.1
# Constructor options that Ax may forward through ``model_options``.
_MODEL_OPTIONS = ("checkpoint", "rebase_factor", "outcome_frame", "cache_baseline")


# ------------------------------------------------------------------------------------ history
@dataclass(frozen=True)
class _History:
    """Persistent (shared, append-only) list of the absorbed data, for re-basing.

    ``X`` is transformed and padded, ``Y`` outcome-transformed (not in the frame). Appending is O(1)
    and leaves every model that shares the older list unchanged.
    """

    parent: _History | None
    X: Tensor
    Y: Tensor

    def chunks(self) -> list[tuple[Tensor, Tensor]]:
        out, node = [], self
        while node is not None:
            out.append((node.X, node.Y))
            node = node.parent
        return out[::-1]

    def concatenated(self) -> tuple[Tensor, Tensor]:
        """All data as ``batch_shape x n x d`` and ``batch_shape x n x 1`` (batches broadcast)."""
        chunks = self.chunks()
        batch = torch.broadcast_shapes(*(c.shape[:-2] for pair in chunks for c in pair))
        X = torch.cat([x.expand(*batch, *x.shape[-2:]) for x, _ in chunks], dim=-2)
        Y = torch.cat([y.expand(*batch, *y.shape[-2:]) for _, y in chunks], dim=-2)
        return X, Y


# ------------------------------------------------------------------------------------ network
def resolve_network(
    checkpoint: str | Path | NeuralProcess, dim_x: int, device: torch.device
) -> NeuralProcess:
    """The float64, frozen, eval-mode network for ``checkpoint``.

    ``"default"``, a shipped name or a path (of any architecture: ``cmanp``, ``tnp``, ``lbanp``)
    are loaded once per process and shared between models (they are never modified); a network
    instance (``CMANP``, ``TNPD``, ``LBANP``) is copied, so the caller's object is untouched.
    """
    if isinstance(checkpoint, NeuralProcess):
        return _freeze(copy.deepcopy(checkpoint).to(device=device, dtype=torch.float64))
    if not isinstance(checkpoint, (str, Path)):
        raise UnsupportedError(
            f"checkpoint must be 'default', a shipped name, a path to a .pt file or a network "
            f"(CMANP, surrogates.tnp.TNPD or surrogates.lbanp.LBANP), got "
            f"{type(checkpoint).__name__}"
        )
    from cmanp_bo import pretrained

    if isinstance(checkpoint, str) and checkpoint == "default":
        return _shared_network("default", dim_x, str(device))
    if isinstance(checkpoint, str) and checkpoint in pretrained.available():
        return _shared_network(f"name:{checkpoint}", 0, str(device))
    path = Path(checkpoint)
    if path.suffix == ".pt" or path.exists():
        path = path.resolve()
        stat = path.stat() if path.exists() else None
        key = f"path:{path}:{stat.st_mtime_ns if stat else 0}:{stat.st_size if stat else 0}"
        return _shared_network(key, 0, str(device))
    raise UnsupportedError(
        f"unknown checkpoint {checkpoint!r}: pass 'default', one of "
        f"{pretrained.available() or 'no shipped checkpoints'}, a path to a .pt file or a network "
        "(CMANP, TNPD or LBANP)"
    )


@functools.cache
def _shared_network(key: str, dim_x: int, device: str) -> NeuralProcess:
    from cmanp_bo import pretrained
    from cmanp_bo.checkpoint import load_checkpoint

    if key == "default":
        net = pretrained.default_bo_network(dim_x, torch.float64)
    elif key.startswith("name:"):
        net = pretrained.load(key[len("name:") :], torch.float64)
    else:
        net = load_checkpoint(key[len("path:") :].rsplit(":", 2)[0], dtype=torch.float64)
    return _freeze(net.to(device))


def _freeze(net: NeuralProcess) -> NeuralProcess:
    # CMANP caches latents on a state only when no autograd graph reaches them.
    return net.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------ model
class CMANPModel(Model, FantasizeMixin, GP):
    r"""A pretrained Constant Memory Attentive Neural Process as a BoTorch model.

    Conditions on ``(train_X, train_Y)`` in one streamed forward pass (nothing is fitted) and
    absorbs new observations through ``condition_on_observations`` at a cost independent of the
    number already absorbed. One outcome per model (use ``ModelList`` for several).

    The same wrapper serves the peers ``surrogates.tnp.TNPD`` and ``surrogates.lbanp.LBANP``
    (pass one, or a checkpoint of one, as ``checkpoint``): their ``condition_on_observations``
    re-encodes all absorbed points through the network.

    Example:
        >>> model = CMANPModel(train_X, train_Y)            # n x d in [0, 1]^d, n x 1
        >>> acqf = qLogNoisyExpectedImprovement(model, X_baseline=train_X)
        >>> model = model.condition_on_observations(x_new, y_new)
    """

    _num_outputs = 1

    def __init__(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        train_Yvar: Tensor | None = None,
        input_transform: InputTransform | None = None,
        outcome_transform: OutcomeTransform | None = None,
        *,
        checkpoint: str | Path | NeuralProcess = "default",
        rebase_factor: float | None = 2.0,
        outcome_frame: OutcomeFrame | None = None,
        state_cache: StateCache | None = None,
        cache_baseline: bool = True,
    ) -> None:
        r"""
        Args:
            train_X: ``batch_shape x n x d`` training inputs. Without an input transform they
                should lie in the unit cube (pass ``Normalize(d=d)`` otherwise).
            train_Y: ``batch_shape x n x 1`` training outcomes.
            train_Yvar: ``batch_shape x n x 1`` observed noise variances. Accepted for API
                compatibility but NOT used: the network infers the noise level from the data in
                context and cannot take known variances (a warning says so).
            input_transform: applied to ``X`` as in ``SingleTaskGP`` (learned on ``train_X`` at
                construction, then frozen).
            outcome_transform: applied to ``Y`` as in ``SingleTaskGP`` (learned on ``train_Y``);
                the posterior is returned in the original outcome space. ``None`` by default:
                the model's own outcome frame already standardises ``Y``.
            checkpoint: ``"default"`` (the shipped BO checkpoint), a shipped checkpoint name, a
                path to a ``.pt`` checkpoint (any architecture) or a network instance, a
                ``CMANP``, ``TNPD`` or ``LBANP`` (copied).
            rebase_factor: re-base the outcome frame when the number of absorbed points reaches
                ``rebase_factor`` times the number the frame was computed from (``None``: never).
            outcome_frame: use this frame instead of computing it from ``train_Y`` (e.g. to
                rebuild a model in the frame of another one).
            state_cache: a ``StateCache`` for loops that rebuild the model from the full data
                at every iteration (Ax does). When the data begin with a data set already
                absorbed into the cache, only the points after it are embedded; the frame
                then follows a fixed schedule (see ``StateCache``). Used for unbatched data
                without an explicit ``outcome_frame`` only.
            cache_baseline: treat an acquisition's baseline as constants. In a joint posterior
                over a batch (two or more elements) whose leading points are the same observed
                inputs in every element (``[X_baseline, X]`` in qLogNEI and the other noisy-EI
                acquisitions), those points are decoded and their covariance factorised once
                per model; each call computes only the blocks of the other points (their
                covariance with the baseline and among themselves), and the posterior
                (``PrefixRootPosterior``, a lazy block covariance) draws samples blockwise. A
                batch of one that begins with the cached baseline uses it too.
                Values are those of the full computation up to rounding; no gradient flows to
                those points (none is wanted: the baseline is fixed). ``False``: compute
                everything at every call.
        """
        super().__init__()
        train_X, train_Y = _validate_data(train_X, train_Y, "train_X", "train_Y")
        if train_Yvar is not None:
            _validate_finite(train_Yvar, "train_Yvar")
            _warn_noise_unused("train_Yvar")
        if rebase_factor is not None and not rebase_factor > 1:
            raise UnsupportedError(f"rebase_factor must be > 1 or None, got {rebase_factor!r}")
        if outcome_frame is not None and not isinstance(outcome_frame, OutcomeFrame):
            raise UnsupportedError(
                f"outcome_frame must be an OutcomeFrame, got {type(outcome_frame).__name__}"
            )
        net = resolve_network(checkpoint, train_X.shape[-1], train_X.device)
        if train_X.shape[-1] > net.cfg.dim_x:
            raise UnsupportedError(
                f"train_X has d={train_X.shape[-1]} input dimensions but the checkpoint supports "
                f"at most {net.cfg.dim_x}; drop or embed dimensions, or pass a checkpoint trained "
                f"for d={train_X.shape[-1]}"
            )
        net = net.for_task_dim(train_X.shape[-1])  # a bank drawn for the task's own d
        if not net.cfg.joint_head and net.cfg.dim_y != 1:
            raise UnsupportedError(f"the checkpoint has dim_y={net.cfg.dim_y}; CMANPModel needs 1")
        X, Y = _learn_transforms(train_X, train_Y, input_transform, outcome_transform)
        _warn_outside_unit_cube(X)
        # Hidden from the module tree: shared between models, kept in float64, and out of the
        # state dict (Ax reloads state dicts across data sizes).
        object.__setattr__(self, "_net", net)
        self._dim = train_X.shape[-1]
        self._rebase_factor = rebase_factor
        self._cache_baseline = bool(cache_baseline)
        self.likelihood = GaussianLikelihood()  # placeholder so a user's ExactMarginalLogLikelihood
        self.likelihood.requires_grad_(False)  # builds; the noise comes from the network
        if input_transform is not None:
            self.input_transform = input_transform
        if outcome_transform is not None:
            self.outcome_transform = outcome_transform
        X = self._pad(X.to(torch.float64))
        Y = Y.to(torch.float64)
        if state_cache is not None and outcome_frame is None and X.dim() == 2:
            built = state_cache.build(net, X, Y, rebase_factor)
            self._state, self._frame, self._history = built.state, built.frame, built.history
            self.num_embedded = built.record.embedded
        else:
            self._frame = OutcomeFrame.from_data(Y) if outcome_frame is None else outcome_frame
            self._history = _History(None, X, Y)
            self._state = net.encode(X, self._frame.apply(Y), block_size=ENCODE_BLOCK)
            #: Points pushed through the network to build this model (all of them without a
            #: cache; only those not yet absorbed with one).
            self.num_embedded = X.shape[-2]
        self._reset_prefix_cache()
        self.to(train_X)

    # -------------------------------------------------------------------------------- basics
    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        """Batch shape of the absorbed data (e.g. ``num_fantasies x b`` after ``fantasize``)."""
        return self._state.batch_shape

    @property
    def network(self) -> NeuralProcess:
        """The (frozen, float64, shared) network."""
        return self._net

    @property
    def context_state(self) -> ContextState | RawContextState:
        """The absorbed data as the network's state (in the outcome frame): constant-size for
        a CMANP, the raw points and their encoding for the peers."""
        return self._state

    @property
    def outcome_frame(self) -> OutcomeFrame:
        return self._frame

    @property
    def num_points(self) -> int:
        """Observations absorbed so far."""
        return self._state.num_points

    def subset_output(self, idcs: list[int]) -> Model:
        if list(idcs) == [0]:
            return self
        raise NotImplementedError("CMANPModel has one output; only subset_output([0]) is defined")

    def custom_fit(self, mll: Any = None, **kwargs: Any) -> Any:
        """No-op so ``fit_gpytorch_mll(mll)`` works: the network is pretrained."""
        if mll is not None:
            mll.eval()
        return mll

    def _set_transformed_inputs(self) -> None:
        # No train_inputs to swap: the transformed data already live in the context state.
        pass

    def _revert_to_original_inputs(self) -> None:
        pass

    @classmethod
    def construct_inputs(cls, training_data: SupervisedDataset, **kwargs: Any) -> dict[str, Any]:
        """Model keyword arguments from a dataset; keeps the CMANP options found in ``kwargs``."""
        inputs = super().construct_inputs(training_data)
        inputs.update({k: v for k, v in kwargs.items() if k in _MODEL_OPTIONS})
        return inputs

    # -------------------------------------------------------------------------------- posterior
    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        independent: bool = False,
        **kwargs: Any,
    ) -> Posterior:
        r"""Joint posterior over the ``q`` points of each t-batch.

        Args:
            X: ``batch_shape x q x d`` inputs (``q x d``, ``b x q x d``, ``b1 x b2 x q x d``, ...);
                ``batch_shape`` broadcasts with the model's batch shape.
            output_indices: ``None`` or ``[0]`` (one output).
            observation_noise: ``False``: the latent function (identical points are perfectly
                correlated). ``True``: add the network's predicted noise variance. A
                ``batch_shape x q x 1`` tensor: add that variance (outcome-transformed units).
            posterior_transform: applied last (e.g. ``ScalarizedPosteriorTransform``).
            independent: return marginals only (diagonal covariance). Needed for ``q > 1`` with
                a network without a joint head; never chosen silently.

        Returns:
            A ``GPyTorchPosterior`` over a ``MultivariateNormal`` with ``broadcast_batch x q``
            mean and ``broadcast_batch x q x q`` covariance, in ``X.dtype``.
        """
        if output_indices is not None and list(output_indices) != [0]:
            raise UnsupportedError(
                f"CMANPModel has one output; got output_indices={output_indices}"
            )
        self.eval()
        _validate_inputs(X, self._dim, "X")
        try:
            torch.broadcast_shapes(X.shape[:-2], self.batch_shape)
        except RuntimeError:
            raise InputDataError(
                f"X has batch shape {tuple(X.shape[:-2])}, which does not broadcast with the "
                f"model's batch shape {tuple(self.batch_shape)}"
            ) from None
        X_tf = self.transform_inputs(X)
        Z = self._pad(X_tf.to(torch.float64))
        prefix = None
        if self._cache_baseline and observation_noise is False and not independent:
            prefix = self._constant_prefix(Z)
        shift, scale = self._frame.mean[..., None], self._frame.std[..., None]
        if prefix is not None:
            # the prefix path's frame has one (scalar) std: the blocks scale by its square
            mean, blocks, root = self._prefix_moments(Z, *prefix)
            s = scale.reshape(())
            c11, c21, c22 = (b.mul(s.pow(2)).to(X.dtype) for b in blocks)
            mean = (shift + scale * mean).to(X.dtype)
            mvn = MultivariateNormal(mean, _block_covariance(c11, c21, c22))
            k = root.shape[-1]
            posterior = PrefixRootPosterior(
                mvn,
                (root * s).to(X.dtype),
                cross=c21,
                tail=c22,
                prefix_samples=self._prefix_cache[-1],
                prefix_loc=mean[(0,) * (mean.dim() - 1)][:k].detach(),  # a constant
            )
        else:
            mean, cov, noise_var = self._frame_moments(Z, independent)
            # From network units to outcome-transformed units.
            mean = shift + scale * mean
            cov = cov * (scale.unsqueeze(-1) * scale.unsqueeze(-2))
            if observation_noise is True:
                cov = cov + torch.diag_embed(noise_var * scale.pow(2))
            elif isinstance(observation_noise, Tensor):
                noise = observation_noise.to(cov)  # batch_shape x q x 1, as in GPyTorchModel
                if noise.dim() > 1 and noise.shape[-1] == 1:
                    noise = noise.squeeze(-1)
                cov = cov + torch.diag_embed(noise.expand(cov.shape[:-1]))
            elif observation_noise is not False:
                raise UnsupportedError(
                    f"observation_noise must be a bool or a Tensor, got {type(observation_noise)}"
                )
            # Lazy, as a GPyTorch model's: nothing is factorised until samples are drawn, so
            # mean and variance (Ax's predictions, 4096 points a call) cost no Cholesky.
            cov = DenseLinearOperator(cov.to(X.dtype))
            posterior = GPyTorchPosterior(MultivariateNormal(mean.to(X.dtype), cov))
        if hasattr(self, "outcome_transform"):
            posterior = self.outcome_transform.untransform_posterior(posterior, X=X_tf)
        if posterior_transform is not None:
            return posterior_transform(posterior=posterior, X=X_tf)
        return posterior

    # ------------------------------------------------------------------- constant prefix
    def _reset_prefix_cache(self) -> None:
        self._observed_keys: frozenset[bytes] | None = None
        # (key, head outputs, mean, covariance, Cholesky factor, prefix samples); the last is
        # PrefixRootPosterior's ``prefix_samples`` (this prefix's samples by base samples)
        self._prefix_cache: tuple[bytes, Tensor, Tensor, Tensor, Tensor, dict] | None = None

    def _constant_prefix(self, Z: Tensor) -> tuple[Tensor, bytes] | None:
        """The leading columns of ``Z`` that are constants, as ``(k x dim_x rows, their bytes)``
        (``None``: none): the same observed input in every batch element (at least two),
        followed by at least one column that is not; or, in a batch of one, the cached prefix
        when ``Z`` begins with exactly its rows and has more.

        That is the layout of every noisy-EI style acquisition (``X_full = [X_baseline, X]``
        with ``X_baseline`` among the observed points). Such columns are treated as constants:
        their head outputs and the Cholesky factor of their covariance are computed once per
        model (``_prefix_moments``), and no gradient flows to them.
        """
        if not self._net.cfg.joint_head or Z.dim() < 3 or len(self._state.batch_shape):
            return None
        if self._frame.std.numel() != 1:
            return None
        flat = Z.detach().reshape(-1, *Z.shape[-2:])
        if flat.shape[0] < 2:
            # A batch of one cannot show which columns are constants; it is the cached prefix
            # if it begins with exactly those rows (an optimiser's last restart, alone).
            if self._prefix_cache is None:
                return None
            key, k = self._prefix_cache[0], self._prefix_cache[1].shape[-2]
            if flat.shape[1] <= k or flat[0, :k].cpu().numpy().tobytes() != key:
                return None
            return flat[0, :k], key
        shared = shared_columns(flat)
        if shared.all() or not shared[0]:
            return None
        k = int((~shared).int().argmax())  # the first column that differs across the batch
        prefix = flat[0, :k]
        rows = prefix.cpu().numpy()
        key = rows.tobytes()
        if self._prefix_cache is not None and self._prefix_cache[0] == key:
            return prefix, key  # checked when it was cached
        if self._observed_keys is None:
            seen = torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in self._history.chunks()])
            self._observed_keys = frozenset(r.tobytes() for r in seen.cpu().numpy())
        return (prefix, key) if all(r.tobytes() in self._observed_keys for r in rows) else None

    def _prefix_moments(
        self, Z: Tensor, prefix: Tensor, key: bytes
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], Tensor]:
        """The mean of a ``Z`` that begins with the constant ``prefix`` (rows and
        bytes from ``_constant_prefix``), with the covariance as its blocks ``(C11, C21, C22)``
        (prefix, remaining points x prefix, remaining points), plus the Cholesky factor of C11.

        The prefix's head outputs, moments and factor are computed once per model; each call
        decodes the remaining ``q`` points and computes their ``q x k`` and ``q x q`` blocks
        only, never the ``(k + q)^2`` covariance of every batch element.
        """
        net, state, k = self._net, self._state, prefix.shape[-2]
        if self._prefix_cache is None or self._prefix_cache[0] != key:
            with torch.no_grad():
                out_c = net.head_outputs(state, prefix)
                mean_c, cov_c, _ = net.moments_from_outputs(out_c, state)
                cov_c = _jittered(cov_c)
                root_c = psd_safe_cholesky(cov_c)
                self._prefix_cache = (key, out_c, mean_c, cov_c, root_c, {})
        _, out_c, mean_c, cov_c, root_c, _ = self._prefix_cache
        out_r = net.head_outputs(state, Z[..., k:, :])
        mean_r, c22, _ = net.moments_from_outputs(out_r, state)
        c21 = net.covariance_from_outputs(out_r, out_c, state)
        batch = mean_r.shape[:-1]
        mean = torch.cat([mean_c.expand(*batch, k), mean_r], dim=-1)
        return mean, (cov_c, c21, _jittered(c22)), root_c

    def _frame_moments(self, Z: Tensor, independent: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, function covariance and noise variance in network units.

        ``Z`` is ``batch_shape x q x dim_x`` (transformed, padded, float64).
        """
        net, state, q = self._net, self._state, Z.shape[-2]
        if not net.cfg.joint_head:
            if q > 1 and not independent:
                raise UnsupportedError(
                    "this checkpoint has no joint head, so it cannot give a joint posterior over "
                    f"q={q} points; use a checkpoint with joint_head=True, evaluate q=1 with "
                    "pending points fantasized via condition_on_observations, or pass "
                    "independent=True to accept independent marginals"
                )
            # A marginal-only network does not separate noise: its variance includes it.
            marginal = net.predict(state, Z)
            var = marginal.variance.squeeze(-1)
            return marginal.mean.squeeze(-1), torch.diag_embed(var), torch.zeros_like(var)
        mean, cov, noise_var = _joint_in_blocks(net, state, Z, independent)
        if independent:
            cov = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
        return mean, _jittered(cov), noise_var

    # -------------------------------------------------------------------------------- updates
    def condition_on_observations(
        self, X: Tensor, Y: Tensor, noise: Tensor | None = None, **kwargs: Any
    ) -> CMANPModel:
        r"""A new model that also holds ``(X, Y)``; this one is unchanged.

        For a CMANP the old context is never re-encoded (except on a scheduled re-base of the
        outcome frame, see ``rebase_factor``, which fantasies never trigger); the peers
        (``net.incremental_update`` false) re-encode all points.

        Args:
            X: ``batch_shape x n' x d`` inputs in the original (untransformed) space.
            Y: ``batch_shape' x n' x 1`` outcomes in the original space; ``batch_shape'`` may
                have more leading dims than ``X`` (fantasies: ``num_fantasies x batch_shape``).
            noise: observed noise variances; not used (the network infers noise), warned.

        Returns:
            A ``CMANPModel`` of batch shape ``broadcast(model, X, Y batch shapes)``.
        """
        self.eval()
        if noise is not None:
            _warn_noise_unused("noise")
        X, Y = _validate_data(X, Y, "X", "Y", self._dim, allow_empty=True)
        try:
            batch = torch.broadcast_shapes(self.batch_shape, X.shape[:-2], Y.shape[:-2])
        except RuntimeError:
            raise InputDataError(
                f"batch shapes do not broadcast: model {tuple(self.batch_shape)}, "
                f"X {tuple(X.shape[:-2])}, Y {tuple(Y.shape[:-2])}"
            ) from None
        if X.shape[-2] == 0:
            return self._with(self._state.expand(batch), self._frame, self._history, 0)
        X_tf = self._preprocess_inputs(X)
        _warn_outside_unit_cube(X_tf)
        Z = self._pad(X_tf.to(torch.float64))
        Y = self._transform_outcomes(Y).to(torch.float64)
        history = _History(self._history, Z, Y)
        num_points = self._state.num_points + Z.shape[-2]
        rebase = (
            self._rebase_factor is not None
            and batch == self.batch_shape
            and num_points >= self._rebase_factor * self._frame.num_points
        )
        if rebase:
            all_X, all_Y = history.concatenated()
            frame = OutcomeFrame.from_data(all_Y)
            state = self._net.encode(all_X, frame.apply(all_Y), block_size=ENCODE_BLOCK)
            return self._with(state, frame, history, all_X.shape[-2])
        state = self._net.update(self._state, Z, self._frame.apply(Y))
        embedded = Z.shape[-2] if self._net.incremental_update else state.num_points
        return self._with(state, self._frame, history, embedded)

    def _with(
        self,
        state: ContextState | RawContextState,
        frame: OutcomeFrame,
        history: _History,
        embedded: int,
    ) -> CMANPModel:
        new = copy.copy(self)  # shallow: shares the network; fresh module dicts below
        new._parameters = dict(self._parameters)
        new._buffers = dict(self._buffers)
        # Transforms are copied (tiny) so no later train()/eval() couples two models.
        new._modules = {
            k: v if k == "likelihood" else copy.deepcopy(v) for k, v in self._modules.items()
        }
        new._state, new._frame, new._history = state, frame, history
        new.num_embedded = embedded
        new._reset_prefix_cache()
        return new

    # -------------------------------------------------------------------------------- helpers
    def _pad(self, Z: Tensor) -> Tensor:
        # Extra network inputs are held at 0: under a stationary prior a constant input
        # dimension is an irrelevant one.
        extra = self._net.cfg.dim_x - Z.shape[-1]
        return torch.nn.functional.pad(Z, (0, extra)) if extra else Z

    def _preprocess_inputs(self, X: Tensor) -> Tensor:
        if hasattr(self, "input_transform"):
            return self.input_transform.preprocess_transform(X)
        return X

    def _transform_outcomes(self, Y: Tensor) -> Tensor:
        if hasattr(self, "outcome_transform"):
            Y, _ = self.outcome_transform(Y)
        _validate_finite(Y, "Y after the outcome transform")
        return Y


def _jittered(cov: Tensor) -> Tensor:
    """``cov`` with ``JITTER`` times its diagonal added to the diagonal."""
    return cov + torch.diag_embed(JITTER * torch.diagonal(cov, dim1=-2, dim2=-1))


# ------------------------------------------------------------------------------ posterior
def _block_covariance(c11: Tensor, c21: Tensor, c22: Tensor) -> LinearOperator:
    """The covariance ``[[C11, C21^T], [C21, C22]]`` as a lazy operator: the ``k x k`` block
    ``C11`` is shared by every batch element of ``C21`` (``batch x q x k``) and ``C22``
    (``batch x q x q``), and nothing ``batch x (k + q)^2`` is formed unless asked for
    (``to_dense``, e.g. ``distribution.covariance_matrix``)."""
    c11 = c11.expand(*c21.shape[:-2], *c11.shape[-2:])
    top = CatLinearOperator(
        to_linear_operator(c11),
        to_linear_operator(c21.transpose(-1, -2)),
        dim=-1,
        output_device=c21.device,
    )
    bottom = CatLinearOperator(
        to_linear_operator(c21), to_linear_operator(c22), dim=-1, output_device=c21.device
    )
    return CatLinearOperator(top, bottom, dim=-2, output_device=c21.device)


class PrefixRootPosterior(GPyTorchPosterior):
    r"""A ``GPyTorchPosterior`` whose first ``k`` points are constants with a known Cholesky
    factor ``L11`` of their covariance (``k = L11.shape[-1]``; ``CMANPModel`` returns one for
    an acquisition's baseline).

    Samples from base samples ``z = [z1, z2]`` are drawn blockwise with the Cholesky factor of
    the whole covariance, ``[[L11, 0], [L21, L22]]`` with ``L21 = C21 L11^-T`` and
    ``L22 = chol(C22 - L21 L21^T)``: the same factor a dense Cholesky gives, so the samples are
    the same, but each call factorises only the ``q x q`` block of the remaining points, and
    gradients flow through ``C21``, ``C22`` and their mean only. ``cross`` (``C21``) and
    ``tail`` (``C22``) may be given; otherwise they are read from the distribution's
    covariance. Everything else (mean, variance, ``distribution``) is the plain
    ``GPyTorchPosterior``.

    ``prefix_samples`` and ``prefix_loc``: for a prefix that is a constant (no gradient flows to
    it), its mean (``k``) and a dict that the posteriors of that prefix share (``CMANPModel``
    keeps one per cached baseline, with the factor). The dict holds the prefix's samples from
    the last base samples seen, so an optimiser whose sampler keeps its base samples (every
    BoTorch MC acquisition) does not recompute the ``k x k`` product at each call. A hit needs
    the same base samples and prefix mean, compared by value. Without them every call computes
    the product.
    """

    def __init__(
        self,
        distribution: MultivariateNormal,
        prefix_root: Tensor,
        cross: Tensor | None = None,
        tail: Tensor | None = None,
        prefix_samples: dict | None = None,
        prefix_loc: Tensor | None = None,
    ) -> None:
        super().__init__(distribution)
        self.prefix_root = prefix_root
        if (cross is None) != (tail is None):
            raise ValueError("pass both cross and tail, or neither")
        self._blocks = None if cross is None else (cross, tail)
        if (prefix_samples is None) != (prefix_loc is None):
            raise ValueError("pass both prefix_samples and prefix_loc, or neither")
        if prefix_loc is not None and (prefix_loc.requires_grad or prefix_root.requires_grad):
            raise ValueError("prefix_loc and prefix_root must be constants to share samples")
        self._prefix_samples, self._prefix_loc = prefix_samples, prefix_loc

    def _shared_prefix_samples(self, z1: Tensor, loc1: Tensor) -> Tensor:
        """``loc1 + z1 L11^T`` (``loc1``: the prefix's mean, ``z1``: the first batch element's
        base samples), from ``prefix_samples`` when the same ``z1`` was seen last."""
        cache = self._prefix_samples
        if cache is None or z1.requires_grad:
            return loc1 + _rows_times(z1, self.prefix_root.transpose(-1, -2))
        loc1 = self._prefix_loc.expand_as(loc1)  # the same values, without the graph
        if "z" in cache:
            z, loc, s1 = cache["z"], cache["loc"], cache["s1"]
            same = (z.shape, z.dtype, loc.shape, loc.dtype) == (
                z1.shape,
                z1.dtype,
                loc1.shape,
                loc1.dtype,
            )
            if same and torch.equal(z, z1) and torch.equal(loc, loc1):
                return s1
        s1 = loc1 + _rows_times(z1, self.prefix_root.transpose(-1, -2))
        cache.update(z=z1.clone(), loc=loc1.clone(), s1=s1)
        return s1

    def rsample_from_base_samples(self, sample_shape: torch.Size, base_samples: Tensor) -> Tensor:
        if base_samples.shape[: len(sample_shape)] != sample_shape:
            raise RuntimeError(
                "`sample_shape` disagrees with shape of `base_samples`. "
                f"Got {sample_shape=} and {base_samples.shape=}."
            )
        mvn, L11 = self.distribution, self.prefix_root
        k, loc = L11.shape[-1], mvn.loc
        z = base_samples.reshape(*base_samples.shape[: base_samples.dim() - loc.dim()], *loc.shape)
        if self._blocks is None:
            cov = mvn.covariance_matrix
            c21, c22 = cov[..., k:, :k], cov[..., k:, k:]
        else:
            c21, c22 = self._blocks
        L21 = _solve_lower_rows(L11, c21)
        L22 = psd_safe_cholesky(c22 - L21 @ L21.transpose(-1, -2))
        z1, z2 = z[..., :k], z[..., k:]
        batch_dims = tuple(range(z.dim() - loc.dim(), z.dim() - 1))
        first = z1[(..., *([slice(0, 1)] * len(batch_dims)), slice(None))]
        if batch_dims and torch.equal(z1, first.expand_as(z1)):
            # The samplers expand base samples over the t-batch: the prefix's samples (the
            # costly k x k product) are then the same in every batch element.
            first_loc = loc[(*([slice(0, 1)] * len(batch_dims)), slice(0, k))]
            s1 = self._shared_prefix_samples(first, first_loc).expand_as(z1)
        else:
            s1 = loc[..., :k] + _rows_times(z1, L11.transpose(-1, -2))
        s2 = loc[..., k:] + (L21 @ z1.unsqueeze(-1) + L22 @ z2.unsqueeze(-1)).squeeze(-1)
        return torch.cat([s1, s2], dim=-1).unsqueeze(-1)


def _rows_times(A: Tensor, M: Tensor) -> Tensor:
    """``A @ M`` for a matrix ``M`` (``k x p``) shared by every batch element of ``A``
    (``... x k``): one matrix product, where ``@`` would copy ``M`` into each batch element."""
    if M.dim() != 2:
        return A @ M
    return (A.reshape(-1, A.shape[-1]) @ M).reshape(*A.shape[:-1], M.shape[-1])


def _solve_lower_rows(L: Tensor, B: Tensor) -> Tensor:
    """``B L^-T`` (``... x q x k``) for a lower-triangular ``L`` (``k x k``): one triangular
    solve with every row of ``B`` as a right-hand side, not one solve per batch element."""
    if L.dim() != 2:
        return torch.linalg.solve_triangular(L, B.transpose(-1, -2), upper=False).transpose(-1, -2)
    rows = B.reshape(-1, B.shape[-1])
    return torch.linalg.solve_triangular(L, rows.T, upper=False).T.reshape(B.shape)


# ------------------------------------------------------------------------------------ cache
def frame_base(num_points: int, rebase_factor: float | None) -> int:
    """The number of leading points the outcome frame of ``num_points`` points is computed from.

    The largest point of the re-base schedule ``1, s_1, s_2, ...`` (``s_{k+1} = ceil(f s_k)``,
    at least ``s_k + 1``) that is ``<= num_points``: ``1, 2, 4, 8, ...`` for ``f = 2``. With
    ``rebase_factor=None`` the frame is never re-based: all points.
    """
    if rebase_factor is None:
        return num_points
    base = 1
    while True:
        nxt = max(base + 1, math.ceil(base * rebase_factor))
        if nxt > num_points:
            return base
        base = nxt


@dataclass(frozen=True)
class EmbedRecord:
    """What one model build through a ``StateCache`` cost.

    Attributes:
        num_points: points in the data set the model was built on.
        embedded: points pushed through the network (the new ones, or all on a miss/re-base
            or with a peer that re-encodes its context).
        reused: points taken over from a cached state without touching the network.
        rebased: the frame moved to the next point of the schedule (all points re-encoded).
    """

    num_points: int
    embedded: int
    reused: int
    rebased: bool


@dataclass(frozen=True)
class _Built:
    state: ContextState | RawContextState
    frame: OutcomeFrame
    history: _History
    record: EmbedRecord


@dataclass(frozen=True)
class _CacheEntry:
    net: NeuralProcess
    rebase_factor: float | None
    num_points: int
    width: int
    digest: str
    state: ContextState | RawContextState
    frame: OutcomeFrame
    history: _History


def _digest(Z: Tensor, Y: Tensor, n: int) -> str:
    """Hash of the first ``n`` rows of ``(Z, Y)`` (exact bytes, shapes and dtypes included)."""
    h = hashlib.blake2b(digest_size=20)
    for T in (Z[..., :n, :], Y[..., :n, :]):
        T = T.detach().cpu().contiguous()
        h.update(f"{tuple(T.shape)}{T.dtype}".encode())
        h.update(T.numpy().tobytes())
    return h.hexdigest()


class StateCache:
    """States of data sets already absorbed, so a model rebuilt on more data embeds only the rest.

    Loops such as Ax's rebuild the surrogate from the FULL data at every iteration. Given the
    data ``(Z, Y)`` (inputs after the input transform, outcomes after the outcome transform) the
    cache looks for the largest cached data set that is an exact prefix of it: same network,
    same ``rebase_factor``, and equal bytes (checked by a hash of the prefix, recomputed from the
    new data, so a changed, reordered or removed old point is never reused). It then absorbs
    only the rows after the prefix with the constant-cost update; without a match it encodes
    everything.

    The outcome frame follows a fixed schedule so that the model is a function of the data alone,
    whether built incrementally or from scratch (e.g. after restarting a process): the frame of
    ``n`` points is computed from the first ``frame_base(n, rebase_factor)`` of them (the first
    1, 2, 4, 8, ... points for a factor of 2). When ``n`` reaches the next point of the schedule
    all points are re-encoded in the new frame: O(n) work every time ``n`` doubles, O(1)
    amortised per point. With the streaming CMANP, points are always absorbed one at a time
    (``_absorb_canonically``), so a state built incrementally is bit-identical to one rebuilt
    from scratch: a run restored from a snapshot proposes exactly what the uninterrupted run
    would. Re-encoding peers (TNP-D, LBANP) encode all points at every call anyway.

    Args:
        max_entries: data sets kept (least recently used dropped first). A state is constant in
            size; each entry also shares the model's history of absorbed points.
    """

    def __init__(self, max_entries: int = 16) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()
        self._records: list[EmbedRecord] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def records(self) -> list[EmbedRecord]:
        """One ``EmbedRecord`` per model built through the cache, oldest first."""
        return list(self._records)

    def clear(self) -> None:
        """Forget every cached state and record (the next build encodes from scratch)."""
        self._entries.clear()
        self._records.clear()

    def _lookup(
        self, net: NeuralProcess, Z: Tensor, Y: Tensor, rebase_factor: float | None
    ) -> _CacheEntry | None:
        n = Z.shape[-2]
        candidates = [
            e
            for e in self._entries.values()
            if e.net is net
            and e.rebase_factor == rebase_factor
            and e.width == Z.shape[-1]
            and e.num_points <= n
        ]
        digests: dict[int, str] = {}
        for entry in sorted(candidates, key=lambda e: -e.num_points):
            if entry.num_points not in digests:
                digests[entry.num_points] = _digest(Z, Y, entry.num_points)
            if digests[entry.num_points] == entry.digest:
                return entry
        return None

    def build(
        self, net: NeuralProcess, Z: Tensor, Y: Tensor, rebase_factor: float | None
    ) -> _Built:
        """State, frame and history of ``(Z, Y)`` (``n x dim_x``, ``n x 1``, float64), re-using
        the longest cached prefix. The result is cached in turn."""
        n = Z.shape[-2]
        hit = self._lookup(net, Z, Y, rebase_factor)
        base = frame_base(n, rebase_factor)
        if hit is not None and (rebase_factor is None or hit.frame.num_points == base):
            frame, k = hit.frame, hit.num_points
            if k == n:
                state, history = hit.state, hit.history
            else:
                Z_new, Y_new = Z[k:], Y[k:]
                state = _absorb_canonically(net, hit.state, Z_new, frame.apply(Y_new))
                history = _History(hit.history, Z_new, Y_new)
            embedded = n - k if net.incremental_update else n
            record = EmbedRecord(n, embedded=embedded, reused=n - embedded, rebased=False)
        else:
            frame = OutcomeFrame.from_data(Y[:base])
            if net.incremental_update:
                state = _absorb_canonically(net, net.empty_state(), Z, frame.apply(Y))
            else:
                state = net.encode(Z, frame.apply(Y), block_size=ENCODE_BLOCK)
            history = _History(None, Z, Y)
            record = EmbedRecord(num_points=n, embedded=n, reused=0, rebased=hit is not None)
        digest = _digest(Z, Y, n)
        entry = _CacheEntry(net, rebase_factor, n, Z.shape[-1], digest, state, frame, history)
        self._entries.pop(digest, None)
        self._entries[digest] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self._records.append(record)
        return _Built(state, frame, history, record)


def _absorb_canonically(
    net: NeuralProcess, state: ContextState, Z: Tensor, Y_framed: Tensor
) -> ContextState:
    """Absorb the points one at a time, each embedded on its own.

    The floating-point result of the streaming update depends on how points are grouped (the
    same math, different rounding). One point at a time is the grouping that every arrival
    pattern shares, so the state of a data set, and hence every proposal, is bit-identical
    whether it was built trial by trial, in bursts, or from scratch after a restart. The cost
    stays O(new points); only a cold rebuild pays one network call per point.
    """
    for i in range(Z.shape[-2]):
        state = net.update(state, Z[i : i + 1], Y_framed[i : i + 1])
    return state


# ------------------------------------------------------------------------------------ joint
def _joint_in_blocks(
    net: NeuralProcess, state: ContextState | RawContextState, Z: Tensor, diagonal_only: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``net.joint_moments`` over ``q`` targets, assembled from blocks of ``JOINT_BLOCK``.

    With ``diagonal_only`` only the diagonal blocks are computed (off-diagonal left at 0).
    """
    q = Z.shape[-2]
    if q <= JOINT_BLOCK:
        return net.joint_moments(state, Z)
    starts = list(range(0, q, JOINT_BLOCK))
    blocks = [Z[..., s : s + JOINT_BLOCK, :] for s in starts]
    diag = [net.joint_moments(state, b) for b in blocks]
    mean = torch.cat([m for m, _, _ in diag], dim=-1)
    noise_var = torch.cat([v for _, _, v in diag], dim=-1)
    rows: list[list[Tensor]] = [[None] * len(blocks) for _ in blocks]  # type: ignore[list-item]
    for i, (_, c, _) in enumerate(diag):
        rows[i][i] = c
    for i in range(len(blocks)):
        for j in range(i + 1, len(blocks)):
            if diagonal_only:
                off = diag[i][1].new_zeros(*diag[i][1].shape[:-1], blocks[j].shape[-2])
            else:
                pair = torch.cat([blocks[i], blocks[j]], dim=-2)
                _, c_pair, _ = net.joint_moments(state, pair)
                off = c_pair[..., : blocks[i].shape[-2], blocks[i].shape[-2] :]
            rows[i][j], rows[j][i] = off, off.transpose(-1, -2)
    cov = torch.cat([torch.cat(r, dim=-1) for r in rows], dim=-2)
    return mean, cov, noise_var


# ------------------------------------------------------------------------------------ checks
def _validate_finite(T: Tensor, name: str) -> None:
    if not isinstance(T, Tensor):
        raise InputDataError(f"{name} must be a torch.Tensor, got {type(T).__name__}")
    if not torch.isfinite(T).all():
        bad = (~torch.isfinite(T)).sum().item()
        raise InputDataError(
            f"{name} contains {bad} NaN or inf value(s); remove or impute those observations"
        )


def _validate_inputs(X: Tensor, dim: int, name: str) -> None:
    if not isinstance(X, Tensor) or not X.is_floating_point():
        raise InputDataError(f"{name} must be a floating-point torch.Tensor")
    if X.dim() < 2:
        raise InputDataError(
            f"{name} must have shape batch_shape x q x d (d={dim}), got {tuple(X.shape)}; "
            f"use {name}.unsqueeze(0) for a single point"
        )
    if X.shape[-1] != dim:
        raise InputDataError(
            f"{name} has {X.shape[-1]} input dimensions but the model was built on d={dim}"
        )
    _validate_finite(X, name)


def _validate_data(
    X: Tensor,
    Y: Tensor,
    x_name: str,
    y_name: str,
    dim: int | None = None,
    allow_empty: bool = False,
) -> tuple[Tensor, Tensor]:
    if not isinstance(X, Tensor) or not X.is_floating_point():
        raise InputDataError(f"{x_name} must be a floating-point torch.Tensor")
    if not isinstance(Y, Tensor) or not Y.is_floating_point():
        raise InputDataError(f"{y_name} must be a floating-point torch.Tensor")
    if X.dim() < 2:
        raise InputDataError(f"{x_name} must have shape batch_shape x n x d, got {tuple(X.shape)}")
    if Y.dim() < 2 or (Y.dim() == X.dim() - 1 and Y.shape == X.shape[:-1] and Y.shape[-1] != 1):
        raise InputDataError(
            f"{y_name} must have shape batch_shape x n x 1, got {tuple(Y.shape)}; "
            f"use {y_name}.unsqueeze(-1)"
        )
    if Y.shape[-1] != 1:
        raise UnsupportedError(
            f"{y_name} has {Y.shape[-1]} outcomes (last dimension); CMANPModel models one: build "
            f"one model per outcome and combine them with botorch.models.ModelList"
        )
    if X.shape[-2] != Y.shape[-2]:
        raise InputDataError(
            f"{x_name} holds {X.shape[-2]} points but {y_name} holds {Y.shape[-2]} "
            f"(shapes {tuple(X.shape)} and {tuple(Y.shape)})"
        )
    if dim is not None and X.shape[-1] != dim:
        raise InputDataError(
            f"{x_name} has {X.shape[-1]} input dimensions but the model was built on d={dim}"
        )
    if X.shape[-2] == 0 and not allow_empty:
        raise InputDataError(f"{x_name} holds no points; CMANPModel needs at least one observation")
    _validate_finite(X, x_name)
    _validate_finite(Y, y_name)
    try:
        torch.broadcast_shapes(X.shape[:-2], Y.shape[:-2])
    except RuntimeError:
        raise InputDataError(
            f"batch shapes of {x_name} {tuple(X.shape[:-2])} and {y_name} {tuple(Y.shape[:-2])} "
            "do not broadcast"
        ) from None
    return X, Y


def _learn_transforms(
    X: Tensor,
    Y: Tensor,
    input_transform: InputTransform | None,
    outcome_transform: OutcomeTransform | None,
) -> tuple[Tensor, Tensor]:
    """Learn the transforms on the training data (as ``SingleTaskGP``) and apply them.

    On error the transforms are restored, so the caller's objects are unchanged.
    """
    modules = [t for t in (input_transform, outcome_transform) if t is not None]
    saved = [(copy.deepcopy(t.state_dict()), t.training) for t in modules]
    try:
        if input_transform is not None:
            input_transform.to(X)
            input_transform.train()
            with torch.no_grad():
                input_transform(X)
            input_transform.eval()
            X = input_transform.preprocess_transform(X)
            _validate_finite(X, "train_X after the input transform")
        if outcome_transform is not None:
            outcome_transform.to(Y)
            outcome_transform.train()
            Y, _ = outcome_transform(Y, X=X)
            outcome_transform.eval()
            _validate_finite(Y, "train_Y after the outcome transform")
    except Exception:
        for t, (state, training) in zip(modules, saved, strict=True):
            t.load_state_dict(state)
            t.train(training)
        raise
    return X, Y


def _warn_outside_unit_cube(X: Tensor) -> None:
    low, high = X.detach().min().item(), X.detach().max().item()
    if low < -UNIT_CUBE_TOLERANCE or high > 1 + UNIT_CUBE_TOLERANCE:
        warnings.warn(
            f"inputs span [{low:.3g}, {high:.3g}] after the input transform, far outside "
            "the unit cube the network was trained on; pass input_transform=Normalize(d=d, "
            "bounds=...) or scale X to [0, 1]^d",
            InputDataWarning,
            stacklevel=3,
        )


def _warn_noise_unused(name: str) -> None:
    warnings.warn(
        f"CMANPModel ignores {name}: the network infers the observation noise from the data in "
        "context and cannot condition on known noise variances",
        InputDataWarning,
        stacklevel=3,
    )


# ------------------------------------------------------------------------------------ optima
def sample_optima(
    model: CMANPModel,
    bounds: Tensor,
    num_optima: int,
    num_candidates: int = 512,
    posterior_transform: PosteriorTransform | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Optima of joint posterior samples on a scrambled Sobol candidate set (discrete Thompson).

    A replacement for ``get_optimal_samples`` (which needs GP-only Matheron paths) to feed
    ``qJointEntropySearch`` and similar.

    Args:
        model: an unbatched ``CMANPModel``.
        bounds: ``2 x d`` lower and upper bounds of the search space (original units).
        num_optima: samples to draw.
        num_candidates: Sobol points per sample (the joint covariance is ``c x c``).
        posterior_transform: e.g. ``ScalarizedPosteriorTransform(-1)`` to minimise.
        seed: seed of the Sobol set and the samples.

    Returns:
        ``num_optima x d`` maximisers and ``num_optima x 1`` sampled maxima.
    """
    from botorch.utils.sampling import draw_sobol_samples

    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        X = draw_sobol_samples(bounds=bounds, n=num_candidates, q=1, seed=seed).squeeze(-2)
        with torch.no_grad():
            posterior = model.posterior(X, posterior_transform=posterior_transform)
            samples = posterior.rsample(torch.Size([num_optima])).squeeze(-1)
    best = samples.argmax(dim=-1)
    return X[best], samples.gather(-1, best.unsqueeze(-1))


@DrawMatheronPaths.register(CMANPModel)
def _no_matheron_paths(model: CMANPModel, **kwargs: Any) -> None:
    raise UnsupportedError(
        "CMANPModel has no pathwise (Matheron) posterior samples, so get_optimal_samples cannot "
        "be used; draw optima with cmanp_bo.botorch_model.sample_optima(model, bounds, "
        "num_optima) and pass them to qJointEntropySearch(optimal_inputs=..., optimal_outputs=...)"
    )


__all__ = ["CMANPModel", "EmbedRecord", "OutcomeFrame", "StateCache", "frame_base", "sample_optima"]
