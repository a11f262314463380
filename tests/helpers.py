"""Shared test fixtures (importable from test modules in tests/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from cmanp_bo.architectures import build_network
from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.process import NeuralProcess


def small_net(
    dim_x: int = 2,
    joint_head: bool = True,
    dtype: torch.dtype = torch.float32,
    arch: str = "cmanp",
    **overrides,
) -> NeuralProcess:
    """A tiny, seeded, untrained ``arch`` network in eval mode (cost and behaviour tests only)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        cfg = CMANPConfig(
            dim_x=dim_x,
            d_model=16,
            d_ff=32,
            num_heads=2,
            num_layers=2,
            num_latents=8,
            num_block_latents=8,
            joint_head=joint_head,
            **overrides,
        )
        return build_network(arch, cfg).to(dtype).eval()


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/NAME.py`` as a module (its folder on ``sys.path`` for its own imports)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
