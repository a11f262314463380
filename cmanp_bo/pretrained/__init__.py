"""Checkpoints shipped inside the package, loaded offline with checksum verification.

Each checkpoint is ``NAME.pt`` with its model card ``NAME.json`` in this folder.
``load(name)`` reads a file once per process and hands out a fresh network each call.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import torch

from cmanp_bo.checkpoint import CheckpointError, load_checkpoint, read_card
from cmanp_bo.nn import CMANP, CMANPConfig

HERE = Path(__file__).resolve().parent

# The BO surrogate uses this checkpoint by default once it is shipped (pretrained-surrogates issue).
DEFAULT_BO = "bo-default"


def available() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.stem for p in HERE.glob("*.pt"))


def path_of(name: str) -> Path:
    path = HERE / f"{name}.pt"
    if not path.exists():
        raise CheckpointError(
            f"no shipped checkpoint named {name!r}; available: {', '.join(available()) or 'none'}"
        )
    return path


def card(name: str) -> dict:
    """The model card of a shipped checkpoint (read once per process; a copy each call)."""
    return copy.deepcopy(_card_cached(name))


@functools.cache
def _card_cached(name: str) -> dict:
    return read_card(path_of(name))


@functools.cache
def _load_cached(name: str) -> CMANP:
    return load_checkpoint(path_of(name))


def load(name: str, dtype: torch.dtype = torch.float32) -> CMANP:
    """A fresh copy (eval mode) of the shipped network ``name``; the file is read once."""
    return copy.deepcopy(_load_cached(name)).to(dtype)


def default_bo_network(dim_x: int, dtype: torch.dtype = torch.float32) -> CMANP:
    """The network the BoTorch model uses by default for ``dim_x`` inputs.

    A shipped checkpoint whose model card names ``dim_x`` in its ``default_for_dims`` range (a
    specialist meta-trained on those dimensions only; the narrowest range wins), else the general
    BO checkpoint ``bo-default`` (zero-padded inputs: it serves every ``dim_x`` up to its own;
    ``CheckpointError`` above that). Without a shipped file (a development tree), a small, seeded,
    randomly initialised network with a joint head (warned), so the API still works. The
    network is ``for_task_dim(dim_x)``'s view where its config asks for one
    (``CMANPConfig.hypothesis_task_dim``).
    """
    if not isinstance(dim_x, int) or isinstance(dim_x, bool) or dim_x < 1:
        raise ValueError(f"dim_x must be a positive int, got {dim_x!r}")
    name = default_bo_name(dim_x)
    if name is not None:
        net = load(name, dtype)
        if net.cfg.dim_x < dim_x:
            raise CheckpointError(
                f"the default BO checkpoint supports up to d={net.cfg.dim_x} inputs, got "
                f"d={dim_x}: reduce the search space, or train a checkpoint for d={dim_x} "
                f"(cmanp-bo train --prior bo --prior-options '{{\"max_dim\": {dim_x}}}' "
                f'--model \'{{"dim_x": {dim_x}, "joint_head": true}}\' --out RUN) and pass '
                "checkpoint='RUN/model.pt'"
            )
        _warn_known_weakness(name, dim_x)
        return net.for_task_dim(dim_x)  # a hypothesis bank drawn for dim_x, where it asks for it
    return _untrained_bo_network(dim_x).to(dtype)


def default_bo_name(dim_x: int, arch: str = "cmanp") -> str | None:
    """Name of the shipped checkpoint ``default_bo_network(dim_x)`` loads (``None``: none).

    ``arch`` (``"tnp"``, ``"lbanp"``): the shipped neural peer of that architecture whose card
    covers ``dim_x`` (the benchmark's default peers); there is no general fallback for peers.
    """
    names = [n for n in available() if card(n).get("arch", "cmanp") == arch]
    ranges = {n: card(n).get("default_for_dims") for n in names}
    covering = [n for n, r in ranges.items() if r and r[0] <= dim_x <= r[1]]
    if covering:
        return min(covering, key=lambda n: (ranges[n][1] - ranges[n][0], n))
    return DEFAULT_BO if arch == "cmanp" and DEFAULT_BO in names else None


def recommended_warp(checkpoint: str | Path, dim_x: int) -> str | None:
    """The outcome warp (``cmanp_bo.warp``) a network's model card recommends: its ``warp``
    entry, the warp it was benchmarked best with (``None``: none, or no card says so).

    ``checkpoint`` as ``network_identity``'s: ``"default"`` (the network the default routing
    picks for ``dim_x``), a shipped name or a path to a ``.pt`` file with its card.
    """
    if str(checkpoint) == "default":
        name = default_bo_name(dim_x)
        return None if name is None else card(name).get("warp")
    if isinstance(checkpoint, str) and checkpoint in available():
        return card(checkpoint).get("warp")
    return read_card(checkpoint).get("warp")


def network_identity(checkpoint: str | Path, dim_x: int) -> str:
    """A short string that changes whenever the weights behind ``checkpoint`` change.

    ``"default"``: the shipped checkpoint the default routing picks for ``dim_x`` and its
    checksum; a shipped name: its checksum; a path: the file's own SHA-256. Benchmarks put it in
    their run keys, so results of an earlier network are never taken for the current one.
    """
    from cmanp_bo.checkpoint import sha256_of

    if str(checkpoint) == "default":
        name = default_bo_name(dim_x)
        if name is None:
            return f"default:d={dim_x}:untrained"
        return f"default:d={dim_x}:{name}@{card(name)['sha256'][:12]}"
    if isinstance(checkpoint, str) and checkpoint in available():
        return f"{checkpoint}@{card(checkpoint)['sha256'][:12]}"
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return f"{path.name}@{sha256_of(path)[:12]}"


def _warn_known_weakness(name: str, dim_x: int) -> None:
    """Repeat the model card's measured weakness for ``dim_x`` (``min_dim`` and up), if any."""
    weak = card(name).get("known_weakness")
    if weak and dim_x >= weak.get("min_dim", 1):
        warnings.warn(f"{name} for d={dim_x}: {weak['message']}", RuntimeWarning, stacklevel=4)


def _untrained_bo_network(dim_x: int) -> CMANP:
    warnings.warn(
        f"no pretrained BO checkpoint supports dim_x={dim_x}: using an UNTRAINED network "
        "(predictions are not meaningful)",
        RuntimeWarning,
        stacklevel=3,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = CMANPConfig(
            dim_x=dim_x,
            dim_y=1,
            d_model=32,
            d_ff=64,
            num_layers=2,
            num_latents=16,
            num_block_latents=16,
            joint_head=True,
        )
        return CMANP(cfg).eval()
