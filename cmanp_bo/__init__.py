"""cmanp-bo: Constant Memory Attentive Neural Processes as Bayesian-optimization surrogates."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["CMANPModel"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import cmanp_bo.nn`` (and training) must not pull in BoTorch.
    if name == "CMANPModel":
        from cmanp_bo.botorch_model import CMANPModel

        return CMANPModel
    raise AttributeError(f"module 'cmanp_bo' has no attribute {name!r}")
