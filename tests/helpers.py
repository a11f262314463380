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


def recorded_run(db: Path, n: int = 14) -> torch.Tensor:
    """A finished 2-D cmanp run of ``n`` steps in a new results database at ``db``; its inputs."""
    from cmanp_bo.bench.store import ResultStore, RunKey

    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64)
    values = ((X - 0.3) ** 2).sum(-1)
    store = ResultStore(db)
    key = RunKey.make("long", "branin", "cmanp", 0, {"network": "bo-d1-2-reg@x"})
    run = {"dim": 2, "budget": n, "num_evals": n, "stopped": None, "best_value": 0.0}
    run |= {"optimal_value": None, "wall_s": 1.0, "surrogate_s": 1.0, "peak_rss_mb": None}
    run |= {"hardware": "test", "finished": "2026-12-02"}
    steps = [
        {"step": i + 1, "x": X[i].tolist(), "value": float(v), "best": float(values[: i + 1].min())}
        | {"regret": None, "score": None, "surrogate_s": 0.0, "cum_surrogate_s": 0.0}
        | {"cum_wall_s": 0.0, "rss_mb": None}
        for i, v in enumerate(values)
    ]
    store.add(key, run, steps)
    store.close()
    return X
