"""One command that trains the BO checkpoints CMANPModel uses by default for d <= 10.

    python experiments/train_bo_checkpoints.py --out runs/bo-chain            # the shipped recipe
    python experiments/train_bo_checkpoints.py --out runs/bo-chain --scale 3  # 3x the steps (GPU)
    python experiments/train_bo_checkpoints.py --out runs/tnp-chain --arch tnp --stage 1 --stage 2

The recipe is a chain of twenty-five resumable ``cmanp_bo.train`` runs, each in ``OUT/<stage>``:

1. ``d2-start``: a fresh network (d_model 64, 3 CMABs, 32 latents, 32 Fourier features, joint
   head) on the BO prior restricted to d <= 2, ``dim_x`` 2, 4000 steps. On d <= 2 the network
   learns to use x within minutes; on d <= 10 it does not learn d >= 2 at all in an hour
   (README, issue 4).
2. ``bo-d2`` (shipped as ``bo-d1-2``, the default for d = 1, 2): warm-started from stage 1,
   34000 steps with a soft cap of 10 nats on each task's loss (``--loss-cap``), which keeps the
   heavy-tailed losses of tasks framed from 1 to 3 points from dominating the gradient.
3. ``bo-d36`` (shipped as the opt-in ``bo-d3-6``, the d = 3..6 default until stage 6
   existed; stages 4 and 5 start from it): warm-started from stage 2 at step 4500 with the
   inputs widened to ``dim_x`` 6 (``train.widen_inputs``: the new input dimensions start
   switched off), 32000 steps on d in 2..6 (d = 2 keeps what stage 2 learned in play while
   the new dimensions are learned).
4. ``bo-d36-short`` (shipped as the opt-in ``bo-d3-6-mixed``: it fits the prior better than
   stage 3 but does not do better BO, README issue 6): stage 3 fine-tuned for 46000 steps
   (lr 4e-4, seed 1) on the BO prior with ``short_share`` 0.5: half the tasks have their
   lengthscales divided by 16, so that functions with interior optima, like the benchmark
   objectives (experiments/fitted_lengthscales.py), are common in training.
5. ``bo-d710-short`` (shipped as the opt-in ``bo-d7-10``, the d = 7..10 default until stage 9
   existed): stage 3 widened to ``dim_x`` 10 and fine-tuned for 36000 steps (lr 4e-4, seed 2)
   on d in 4..10 with the same mixed prior. Stages 4 and 5 both start from stage 3's final
   weights: run them as two processes.
6. ``bo-d36-near`` (shipped as ``bo-d3-6-near``, the default for d = 3..6): stage 4 fine-tuned
   for 36000 steps (lr 4e-4, seed 3) on the same mixed prior with ``near_share`` 0.5: half the
   target points sit next to a random context point, so the loss teaches the predictive at and
   around the observations, which the networks trained on uniform targets reproduce poorly at
   d >= 3 (README, issues 4 and 6).

7. ``bo-d36-reg`` (shipped as ``bo-d3-6-reg``, the default for d = 3..6): stage 6 with the
   regression memory added (``cmanp_bo.nn.regression``: 4 banks of 64 random Fourier features
   whose streamed Bayesian linear regression is read at every target; it enters through zero
   weights, so training starts from stage 6's predictions), 25000 steps (lr 4e-4, seed 5) on
   stage 6's prior.
8. ``bo-d2-reg`` (shipped as ``bo-d1-2-reg``): stage 2 with the regression memory added, 16000
   steps (lr 4e-4, seed 6) on stage 2's prior. Stages 7 and 8 are independent: run them as two
   processes. The neural peers have no regression memory: they stop at stage 2.
9. ``bo-d710-reg`` (shipped as ``bo-d7-10-reg``, the d = 7..10 default until stage 11): stage 5
   with the regression memory added, 22000 steps (lr 4e-4, seed 7) on stage 5's prior with
   ``near_share`` 0.5 (stage 6's near targets, which stage 5 never had). It is independent of
   stages 6 to 8.
10. ``bo-d36-poly`` (shipped as the opt-in ``bo-d3-6-poly``): stage 7 with the polynomial
    memory added (``cmanp_bo.nn.regression.PolynomialMemory``: a model-averaged Bayesian quadratic
    regression over the context, no weights of its own; its readout enters through zero
    weights), 14000 steps (lr 4e-4, seed 8) on stage 7's prior.
11. ``bo-d710-poly`` (shipped as ``bo-d7-10-poly``, the default for d = 7..10): stage 9 with
    the polynomial memory added, 14000 steps (lr 4e-4, seed 9) on stage 9's prior. Stages 10
    and 11 are independent: run them as two processes.
12. ``bo-d2-near`` (stop 20; not shipped): stage 8 fine-tuned for 24000 steps (lr 4e-4, seed
    10) on d in 1..2 with the mixed prior (``short_share`` 0.5) and near-context targets
    (``near_share`` 0.5), the two prior changes the d = 3..6 network got in stages 4 and 6 and
    the d <= 2 networks never had. It fits the plain prior better than stage 8 at n >= 64 but
    did BO no better (README, issues 4 and 6), so stage 8 stays the d = 1, 2 default. It is
    independent of stages 9 to 11.
13. ``bo-d36-bo`` (stop 22): stage 7 fine-tuned for 15000 steps (lr 4e-4, seed 11) on stage 7's
    prior with BO-like contexts (``cluster_share`` 0.5: half the tasks' contexts are a uniform
    initial design followed by rounds of points around the best values so far, as BO data
    are; ``cmanp_bo.priors.bo``). Stop 21 measured that the d = 3..6 network's mean around the
    incumbent barely follows the objective (experiments/incumbent_probe.py) on data laid out
    this way, which no earlier stage trained on. It is independent of stages 8 to 12.
14. ``bo-d710-long`` (stop 23): stage 11 fine-tuned for 10000 steps (lr 4e-4, seed 12) on stage
    11's prior with contexts of up to 1024 points (``max_context`` 1024; every earlier stage
    stops at 512). At d = 10 the d = 7..10 default's log-likelihood fell from n = 256 to
    n = 1024 by 0.054 nats per point (issue 4's no-collapse tolerance is 0.05): 1024 points
    were outside what it was trained on. It is independent of stages 12 and 13.
15. ``bo-d36-exact`` (stop 30): stage 7 fine-tuned for 12000 steps (lr 4e-4, seed 13) on stage
    7's prior without the short-lengthscale tasks (``short_share`` 0: BoTorch's lengthscale
    hyperprior alone, as the issue's prior states it) and with near noise-free observations
    (noise std 1e-4 to 1e-2 of the signal instead of 1e-3 to 0.1). Stop 21 read the d = 3..6
    network's flat mean around the incumbent as hedging between a short lengthscale and noise;
    this prior has neither. Independent of stages 8 to 14.
16. ``bo-d36-plain`` (stop 30): the same without the noise change (``short_share`` 0 only, seed
    14), to tell the two apart. Run stages 15 and 16 as two processes.
17. ``bo-d36-hyp-pilot`` (stop 32): stage 7 with the hypothesis memory added
    (``cmanp_bo.nn.regression.HypothesisMemory``: 16 ARD lengthscale hypotheses from BoTorch's
    hyperprior, 32 random features per kernel; its readout enters through zero weights), 3000
    steps (lr 4e-4, seed 4) on stage 7's prior. On its own, such a memory reads out 0.3 to 0.8
    nats per point more than the networks on held-out prior tasks
    (experiments/hypothesis_bma.py). Independent of stages 8 to 16.
18. ``bo-d36-hyp`` (stop 32): stage 17 continued for 9000 steps (lr 4e-4, seed 5).
19. ``bo-d36-hyp64`` (stop 33): stage 18 with its hypothesis bank redrawn at 64 hypotheses x 64
    features per kernel, and no training (0 steps): the bank is fixed buffers and the readout
    keeps its width, so every learned weight is stage 18's. The larger bank reads the context
    more accurately; training with it costs 5-10x more per step on a CPU (README, issue 4).
20. ``bo-d36-hyp-short`` (stop 34): stage 18 with its bank redrawn so that half of its
    hypotheses are 16 times shorter (``hypothesis_short_share=0.5``, the share of the prior's
    tasks that ``short_share`` shortens; stages 17-19 drew every hypothesis from the
    hyperprior alone), 3000 steps (lr 4e-4, seed 15) so that the decoder learns to use them.
21. ``bo-d36-hyp-short64`` (stop 34): stage 20's bank redrawn at 64 x 64, as stage 19, 0 steps.
22. ``bo-d36-hyp-exact`` (stop 35): stage 20 with the hypothesis readout exact while the context
    holds at most 64 points (``hypothesis_exact_points``; no new weight), 2000 steps (lr 4e-4,
    seed 16), so that the decoder learns from the exact average what it learned from the
    random-feature one.
23. ``bo-d36-hyp-exact64`` (stop 35): stage 22's bank redrawn at 64 x 64 and exact up to 128
    points, 0 steps.
24. ``bo-d36-hyp-resid`` (stop 35): stage 20 as a residual network (``hypothesis_residual``: the
    head corrects the hypothesis readout's mean and stds instead of predicting them; its mean
    and std outputs zeroed at the start, so training starts from the readout), exact up to 64
    points, 2000 steps (lr 4e-4, seed 17). Independent of stages 22 and 23.
25. ``bo-d36-hyp-resid64`` (stop 35): stage 24's bank redrawn at 64 x 64 and exact up to 128
    points, 0 steps.

Every stage resumes from its ``last.pt`` after an interruption, and a finished stage is not run
again, so re-running the command continues the chain. ``--scale`` multiplies every step count
(``--scale 0.01`` is a smoke test); the snapshot step of stage 3 scales with it. Each stage uses
CUDA when present. Stages 2 and 3 are independent once stage 2 has passed the snapshot step, so
on a 2-core machine run ``--stage 2`` and ``--stage 3`` as two processes after that point (that
is how the shipped checkpoints were made; their model cards hold the exact commands).

``--arch tnp`` or ``--arch lbanp`` trains a neural peer with the same recipe and model settings,
for the benchmark's equal-budget comparison (scale its steps to CMANP's CPU time with ``--scale``).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from cmanp_bo.architectures import ARCHITECTURES
from cmanp_bo.train import TrainConfig, train

MODEL = {
    "dim_x": 2,
    "d_model": 64,
    "num_layers": 3,
    "num_latents": 32,
    "num_block_latents": 32,
    "joint_head": True,
    "fourier_features": 32,
}
SNAPSHOT_STEP = 4500  # stage 3 starts from stage 2's weights here
SHORT = {"short_share": 0.5}  # stages 4, 5: half the tasks with lengthscales / 16 (the default)
NEAR = {"near_share": 0.5}  # stage 6: half the targets next to a context point
REGRESSION = {"regression_features": 64}  # stages 7, 8: add the regression memory
POLYNOMIAL = {**REGRESSION, "polynomial_memory": True}  # stages 10, 11: add the quadratic one
CLUSTER = {"cluster_share": 0.5}  # stage 13: half the contexts laid out as BO lays out its data
LONG = {"max_context": 1024}  # stage 14: contexts up to 1024 points (512 before)
PLAIN = {"short_share": 0.0}  # stages 15, 16: BoTorch's lengthscale hyperprior alone
EXACT = {**PLAIN, "noise_min": 1e-4, "noise_max": 1e-2}  # stage 15: and near noise-free tasks
# stages 17, 18: the hypothesis memory added (16 ARD hypotheses x 2 kernels, 32 features each)
HYPOTHESIS = {**REGRESSION, "hypothesis_count": 16, "hypothesis_features": 32}
# stage 19: stage 18's bank redrawn larger (64 hypotheses x 2 kernels, 64 features each)
HYPOTHESIS64 = {**HYPOTHESIS, "hypothesis_count": 64, "hypothesis_features": 64}
# stages 20, 21: half the hypotheses 16 times shorter, as half the prior's tasks are
HYPOTHESIS_SHORT = {**HYPOTHESIS, "hypothesis_short_share": 0.5}
HYPOTHESIS_SHORT64 = {**HYPOTHESIS64, "hypothesis_short_share": 0.5}
# stages 22, 23: the hypothesis readout exact while the context holds at most 64 (128) points
HYPOTHESIS_SHORT_EXACT = {**HYPOTHESIS_SHORT, "hypothesis_exact_points": 64}
HYPOTHESIS_SHORT64_EXACT = {**HYPOTHESIS_SHORT64, "hypothesis_exact_points": 128}
# stage 24: the head corrects the (exact) hypothesis readout instead of predicting on its own
HYPOTHESIS_RESIDUAL = {**HYPOTHESIS_SHORT_EXACT, "hypothesis_residual": True}
HYPOTHESIS_RESIDUAL64 = {**HYPOTHESIS_SHORT64_EXACT, "hypothesis_residual": True}


def stages(
    out: Path, scale: float, eval_batches: int | None = None, arch: str = "cmanp"
) -> dict[int, tuple[str, TrainConfig, int | None]]:
    """Stage number -> (run folder name, settings, step at which to snapshot ``last.pt``).

    ``eval_batches`` overrides the held-out evaluation's size (the recipe: 20, then 50);
    ``arch`` trains a neural peer (tnp, lbanp) with the same recipe instead of CMANP.
    """

    def steps(n: int) -> int:
        return max(1, round(n * scale))

    base = dict(
        arch=arch, prior="bo", batch_size=16, lr=5e-4, grad_clip=1.0, eval_every=steps(1000)
    )
    start = TrainConfig(
        prior_options={"max_dim": 2},
        steps=steps(4000),
        eval_batches=eval_batches or 20,
        checkpoint_every=500,
        model=MODEL,
        **base,
    )
    d2 = TrainConfig(
        prior_options={"max_dim": 2},
        steps=steps(34000),
        model=MODEL,
        loss_cap=10.0,
        init_from=str(out / "d2-start" / "model.pt"),
        eval_batches=eval_batches or 50,
        **base,
    )
    d36 = TrainConfig(
        prior_options={"max_dim": 6, "min_dim": 2},
        steps=steps(32000),
        model={**MODEL, "dim_x": 6},
        loss_cap=10.0,
        init_from=str(out / "bo-d2-snapshot.pt"),
        eval_batches=eval_batches or 50,
        **base,
    )

    def fine_tune(
        min_dim: int,
        max_dim: int,
        n_steps: int,
        seed: int,
        start: str = "bo-d36",
        model: dict | None = None,
        eval_every: int = 2000,
        **options,
    ) -> TrainConfig:
        """Stage ``start``'s final weights (widened to ``max_dim`` inputs, with the ``model``
        overrides) on the mixed prior (with extra prior ``options``)."""
        return TrainConfig(
            prior_options={"max_dim": max_dim, "min_dim": min_dim, **SHORT, **options},
            steps=steps(n_steps),
            model={**MODEL, "dim_x": max_dim, **(model or {})},
            loss_cap=10.0,
            init_from=str(out / start / "model.pt"),
            eval_batches=eval_batches or 30,
            checkpoint_every=500,
            seed=seed,
            **{**base, "lr": 4e-4, "eval_every": steps(eval_every)},
        )

    d36_short = fine_tune(2, 6, 46000, seed=1)
    d710_short = fine_tune(4, 10, 36000, seed=2)
    d36_near = fine_tune(2, 6, 36000, seed=3, start="bo-d36-short", **NEAR)
    reg = dict(model=REGRESSION, eval_every=2500, **NEAR)  # stages 7, 9: the memory added
    d36_reg = fine_tune(2, 6, 25000, seed=5, start="bo-d36-near", **reg)
    d710_reg = fine_tune(4, 10, 22000, seed=7, start="bo-d710-short", **reg)
    poly = dict(model=POLYNOMIAL, eval_every=2000, **NEAR)  # stages 10, 11
    d36_poly = fine_tune(2, 6, 14000, seed=8, start="bo-d36-reg", **poly)
    d710_poly = fine_tune(4, 10, 14000, seed=9, start="bo-d710-reg", **poly)
    # stage 12: stage 8 on d <= 2's mixed prior with near-context targets (what stages 4 and 6
    # gave the d = 3..6 network, and the d = 1, 2 network never had)
    d2_near = fine_tune(1, 2, 24000, seed=10, start="bo-d2-reg", **reg)
    d36_bo = fine_tune(2, 6, 15000, seed=11, start="bo-d36-reg", **reg, **CLUSTER)
    d710_long = fine_tune(4, 10, 10000, seed=12, start="bo-d710-poly", **poly, **LONG)
    d36_exact = fine_tune(2, 6, 12000, seed=13, start="bo-d36-reg", **reg, **EXACT)
    d36_plain = fine_tune(2, 6, 12000, seed=14, start="bo-d36-reg", **reg, **PLAIN)
    hyp = dict(model=HYPOTHESIS, eval_every=1000, **NEAR)
    d36_hyp_pilot = fine_tune(2, 6, 3000, seed=4, start="bo-d36-reg", **hyp)
    d36_hyp = fine_tune(2, 6, 9000, seed=5, start="bo-d36-hyp-pilot", **{**hyp, "eval_every": 3000})

    def redrawn(start: str, seed: int, model: dict) -> TrainConfig:
        """Stage ``start`` with its hypothesis bank redrawn (or read out otherwise) as ``model``
        says: no step, whatever --scale (the redraw is the whole stage; stages 19, 21, 23, 25)."""
        return replace(
            fine_tune(2, 6, 0, seed=seed, start=start, **{**hyp, "model": model}), steps=0
        )

    d36_hyp64 = redrawn("bo-d36-hyp", 5, HYPOTHESIS64)
    short = {**hyp, "model": HYPOTHESIS_SHORT}
    d36_hyp_short = fine_tune(2, 6, 3000, seed=15, start="bo-d36-hyp", **short)
    d36_hyp_short64 = redrawn("bo-d36-hyp-short", 15, HYPOTHESIS_SHORT64)
    exact = {**hyp, "model": HYPOTHESIS_SHORT_EXACT}
    d36_hyp_exact = fine_tune(2, 6, 2000, seed=16, start="bo-d36-hyp-short", **exact)
    d36_hyp_exact64 = redrawn("bo-d36-hyp-exact", 16, HYPOTHESIS_SHORT64_EXACT)
    resid = {**hyp, "model": HYPOTHESIS_RESIDUAL}
    d36_hyp_resid = fine_tune(2, 6, 2000, seed=17, start="bo-d36-hyp-short", **resid)
    d36_hyp_resid64 = redrawn("bo-d36-hyp-resid", 17, HYPOTHESIS_RESIDUAL64)
    d2_reg = replace(
        d2,
        steps=steps(16000),
        model={**MODEL, **REGRESSION},
        init_from=str(out / "bo-d2" / "model.pt"),
        lr=4e-4,
        seed=6,
        eval_every=steps(2500),
        eval_batches=eval_batches or 30,
        checkpoint_every=500,
    )
    return {
        1: ("d2-start", start, None),
        2: ("bo-d2", d2, steps(SNAPSHOT_STEP)),
        3: ("bo-d36", d36, None),
        4: ("bo-d36-short", d36_short, None),
        5: ("bo-d710-short", d710_short, None),
        6: ("bo-d36-near", d36_near, None),
        7: ("bo-d36-reg", d36_reg, None),
        8: ("bo-d2-reg", d2_reg, None),
        9: ("bo-d710-reg", d710_reg, None),
        10: ("bo-d36-poly", d36_poly, None),
        11: ("bo-d710-poly", d710_poly, None),
        12: ("bo-d2-near", d2_near, None),
        13: ("bo-d36-bo", d36_bo, None),
        14: ("bo-d710-long", d710_long, None),
        15: ("bo-d36-exact", d36_exact, None),
        16: ("bo-d36-plain", d36_plain, None),
        17: ("bo-d36-hyp-pilot", d36_hyp_pilot, None),
        18: ("bo-d36-hyp", d36_hyp, None),
        19: ("bo-d36-hyp64", d36_hyp64, None),
        20: ("bo-d36-hyp-short", d36_hyp_short, None),
        21: ("bo-d36-hyp-short64", d36_hyp_short64, None),
        22: ("bo-d36-hyp-exact", d36_hyp_exact, None),
        23: ("bo-d36-hyp-exact64", d36_hyp_exact64, None),
        24: ("bo-d36-hyp-resid", d36_hyp_resid, None),
        25: ("bo-d36-hyp-resid64", d36_hyp_resid64, None),
    }


STAGES = tuple(stages(Path("."), 1.0))  # the stage numbers, in order


def _finished(run: Path) -> bool:
    return (run / "model.pt").exists()


def run_stage(
    out: Path,
    number: int,
    scale: float,
    eval_batches: int | None = None,
    progress: bool = True,
    arch: str = "cmanp",
) -> Path:
    """Run (or resume, or skip when finished) one stage; returns its ``model.pt``."""
    recipe = stages(out, scale, eval_batches, arch)
    name, cfg, snapshot_at = recipe[number]
    run = out / name
    if _finished(run):
        print(f"stage {number} ({name}): finished, {run / 'model.pt'}")
        return run / "model.pt"
    if number == 3 and not (out / "bo-d2-snapshot.pt").exists():
        raise SystemExit(f"stage 3 starts from stage 2 at step {recipe[2][2]}: run stage 2 first")
    # a stage warm-started from another stage's final weights needs that stage finished
    by_run = {out / run_name: k for k, (run_name, _, _) in recipe.items()}
    source = Path(cfg.init_from).parent if cfg.init_from else None
    if source in by_run and not _finished(source):
        k = by_run[source]
        raise SystemExit(
            f"stage {number} starts from stage {k}'s final weights: run stage {k} first"
        )
    if snapshot_at is not None and not (out / "bo-d2-snapshot.pt").exists():
        last = run / "last.pt"
        done = torch.load(last, weights_only=False)["step"] if last.exists() else 0
        if done < snapshot_at:
            train(cfg, run, progress=progress, stop_after=snapshot_at)
        elif done > snapshot_at:
            raise SystemExit(f"{last} is past step {snapshot_at} without a snapshot; start over")
        shutil.copyfile(last, out / "bo-d2-snapshot.pt")
        print(f"stage {number} ({name}): snapshot at step {snapshot_at} for stage 3")
    path = train(cfg, run, progress=progress)
    print(f"stage {number} ({name}): wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, type=Path, help="folder of the chain's runs")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    p.add_argument(
        "--stage",
        type=int,
        choices=STAGES,
        action="append",
        help="only these (default all)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default="cmanp",
        help="network (tnp, lbanp: a neural peer trained with the same recipe)",
    )
    p.add_argument(
        "--eval-batches", type=int, help="held-out batches per evaluation (default: the recipe's)"
    )
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for number in sorted(set(args.stage or STAGES)):
        run_stage(args.out, number, args.scale, args.eval_batches, arch=args.arch)


if __name__ == "__main__":
    main()
