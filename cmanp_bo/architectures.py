"""The neural-process architectures by name, as stored in training configs and checkpoints.

- ``cmanp``: ``cmanp_bo.nn.CMANP``, constant-memory state, O(new points) updates.
- ``tnp``: ``surrogates.tnp.TNPD``, full attention over the context, re-encoded on update.
- ``lbanp``: ``surrogates.lbanp.LBANP``, latent bottleneck, re-encoded on update.

All three take a ``CMANPConfig`` and share the inputs, decoder and heads
(``cmanp_bo.nn.process.NeuralProcess``).
"""

from __future__ import annotations

from typing import Any

from cmanp_bo.nn import CMANP, CMANPConfig
from cmanp_bo.nn.process import NeuralProcess

ARCHITECTURES = ("cmanp", "tnp", "lbanp")


def network_class(arch: str) -> type[NeuralProcess]:
    """The network class of ``arch`` (one of ``ARCHITECTURES``)."""
    # The peers live in the top-level ``surrogates`` package, which imports ``cmanp_bo.nn``.
    if arch == "cmanp":
        return CMANP
    if arch == "tnp":
        from surrogates.tnp import TNPD

        return TNPD
    if arch == "lbanp":
        from surrogates.lbanp import LBANP

        return LBANP
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_network(arch: str, config: CMANPConfig | dict[str, Any]) -> NeuralProcess:
    """A freshly initialised network of ``arch`` (uses the global torch RNG).

    Args:
        arch: one of ``ARCHITECTURES``.
        config: a ``CMANPConfig`` or a dict of its fields.
    """
    cls = network_class(arch)
    return cls(config if isinstance(config, CMANPConfig) else CMANPConfig(**config))


__all__ = ["ARCHITECTURES", "build_network", "network_class"]
