"""Saving and loading network checkpoints with a model card and a checksum.

A checkpoint is ``NAME.pt`` (architecture name + config + weights, loaded with
``weights_only=True``) beside ``NAME.json``, its model card, which records the file's SHA-256.
Loading verifies the checksum and the config, builds the network of the stored architecture
(``cmanp``, ``tnp`` or ``lbanp``; files written before the field existed are CMANPs), and fails
with ``CheckpointError`` naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from cmanp_bo.architectures import network_class
from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.process import NeuralProcess

FORMAT = "cmanp-bo/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, altered or does not match its config."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(
    net: NeuralProcess, path: str | os.PathLike, card: dict[str, Any] | None = None
) -> dict:
    """Write ``net`` to ``path`` (float32 weights) and its model card beside it.

    Args:
        net: a ``CMANP``, ``TNPD`` or ``LBANP``; its ``arch`` is stored with the config.

    Returns:
        The model card written, with ``sha256``, ``arch`` and ``config`` filled in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().to("cpu", torch.float32) for k, v in net.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": net.arch,
        "config": net.cfg.to_dict(),
        "state_dict": state_dict,
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    card = dict(card or {})
    card.update(
        format=FORMAT,
        file=path.name,
        sha256=sha256_of(path),
        arch=net.arch,
        config=net.cfg.to_dict(),
        num_parameters=sum(p.numel() for p in net.parameters()),
    )
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    cpath = card_path(path)
    if not cpath.exists():
        raise CheckpointError(f"model card {cpath} is missing; it carries the checksum of {path}")
    try:
        return json.loads(cpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"model card {cpath} is not valid JSON: {e}") from None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    verify: bool = True,
    dtype: torch.dtype = torch.float32,
    expected_config: dict[str, Any] | None = None,
) -> NeuralProcess:
    """Load a checkpoint in eval mode as the network of its stored architecture.

    Args:
        path: the ``.pt`` file; its model card ``.json`` must sit beside it when ``verify``.
        verify: check the file's SHA-256 against the model card.
        dtype: dtype of the returned network.
        expected_config: if given, config fields the checkpoint must have (e.g. ``dim_x``).

    Returns:
        A ``CMANP``, ``TNPD`` or ``LBANP`` (a file without an architecture field: ``CMANP``).

    Raises:
        CheckpointError: missing, corrupt or altered file, unknown architecture, or a config
            mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if verify:
        card = read_card(path)
        actual = sha256_of(path)
        if card.get("sha256") != actual:
            raise CheckpointError(
                f"checksum mismatch for {path}: the model card says {card.get('sha256')}, "
                f"the file is {actual}; the file is corrupt or was altered"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    config = payload["config"]
    for key, value in (expected_config or {}).items():
        if config.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} has {key}={config.get(key)!r}, expected {value!r}"
            )
    arch = payload.get("arch", "cmanp")
    try:
        cls = network_class(arch)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    try:
        # Building the network draws its (overwritten) initial weights: keep that off the global
        # RNG, so that loading a checkpoint lazily inside a seeded loop changes nothing after it.
        with torch.random.fork_rng():
            net = cls(CMANPConfig(**config))
        net.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its config: {e}") from None
    return net.to(dtype).eval()
