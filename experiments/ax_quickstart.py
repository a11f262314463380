"""A first Ax run with CMANP as the surrogate: minimise Branin in 15 trials."""

from __future__ import annotations

import torch
from ax import Client, RangeParameterConfig
from botorch.test_functions import Branin

from cmanp_bo.ax import cmanp_generation_strategy

branin = lambda p: Branin()(torch.tensor([[p["x1"], p["x2"]]])).item()
bounds = {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}
client = Client(random_seed=0)
client.configure_experiment(
    parameters=[
        RangeParameterConfig(name=k, parameter_type="float", bounds=b) for k, b in bounds.items()
    ]
)
client.configure_optimization(objective="-branin")
client.set_generation_strategy(cmanp_generation_strategy(dim=2, num_restarts=8, raw_samples=256))
for _ in range(15):
    for index, params in client.get_next_trials(max_trials=1).items():
        client.complete_trial(index, {"branin": branin(params)})
best, values, index, _ = client.get_best_parameterization(use_model_predictions=False)
print(f"best of 15: trial {index} {best} branin={values['branin'][0]:.3f} (global min 0.398)")
