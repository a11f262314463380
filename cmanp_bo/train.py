"""Meta-training loop: seeded, resumable, cosine learning rate, CUDA when present.

    python -m cmanp_bo.train --out runs/gp1d-rbf --steps 20000          (or: cmanp-bo train ...)
    cmanp-bo train --arch lbanp --out runs/gp1d-rbf-lbanp ...          (a peer: tnp or lbanp)

The run directory holds ``last.pt`` (everything needed to resume, written atomically every
``checkpoint_every`` steps), ``curve.csv`` (held-out log-likelihood vs steps and wall time) and,
at the end, ``model.pt`` + ``model.json`` (the shippable checkpoint and its model card).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from cmanp_bo.architectures import ARCHITECTURES, build_network, network_class
from cmanp_bo.checkpoint import load_checkpoint, save_checkpoint
from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.process import NeuralProcess, soft_cap
from cmanp_bo.priors import BOPriorSampler, GPSampler


@dataclass
class TrainConfig:
    """What a training run does; stored in the checkpoint and checked on resume."""

    kernel: str = "rbf"  # the 1-D GP prior's kernel
    prior: str = "gp1d"  # "gp1d" (the paper's 1-D protocol) or "bo" (d-dim unit cube)
    prior_options: dict = field(default_factory=dict)  # BOPriorSampler keyword arguments
    steps: int = 100_000
    batch_size: int = 16
    lr: float = 5e-4
    seed: int = 0
    eval_every: int = 1000
    eval_batches: int = 50
    checkpoint_every: int = 250
    model: dict = field(default_factory=dict)  # CMANPConfig overrides
    grad_clip: float = 0.0  # max global gradient norm (0: no clipping)
    arch: str = "cmanp"  # network architecture: one of cmanp_bo.architectures.ARCHITECTURES
    loss_cap: float = 0.0  # soft cap on each task's loss (cmanp_bo.nn.process.soft_cap; 0: none)
    init_from: str = ""  # checkpoint whose weights start a new run (warm start; "": random init)


PRIORS = ("gp1d", "bo")


def make_sampler(cfg: TrainConfig, seed: int) -> GPSampler | BOPriorSampler:
    """The task sampler of a run (``seed`` separates training from held-out tasks)."""
    if cfg.prior == "gp1d":
        return GPSampler(cfg.kernel, seed=seed)
    if cfg.prior == "bo":
        return BOPriorSampler(seed=seed, **cfg.prior_options)
    raise ValueError(f"unknown prior {cfg.prior!r}; choose one of {PRIORS}")


def describe_prior(cfg: TrainConfig) -> str:
    if cfg.prior == "bo":
        return f"d-dim GP prior on the unit cube (cmanp_bo.priors.bo), options {cfg.prior_options}"
    return (
        f"1-D GP ({cfg.kernel}), paper protocol: x~U[-2,2], Nc~U{{3..46}}, "
        "Nt~U{3..49-Nc}, lengthscale~U[0.1,0.6), scale~U[0.1,1.0), noise std 0.02"
    )


def _same_config(saved: dict, cfg: TrainConfig) -> bool:
    # Fields added after a run started take their defaults. The step total may change on resume
    # (to extend or shorten a run): the cosine schedule then follows the new total from the
    # current step on, and the run's curve shows where.
    a, b = {**asdict(TrainConfig()), **saved}, asdict(cfg)
    a.pop("steps"), b.pop("steps")
    return a == b


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def evaluate(
    net: NeuralProcess,
    prior: str | TrainConfig,
    num_batches: int,
    batch_size: int = 16,
    seed: int = 10_000,
    device: str = "cpu",
) -> tuple[float, float]:
    """Mean target log-likelihood (joint for the AND head) and its standard error on a fixed,
    seeded held-out set.

    Args:
        prior: a run's ``TrainConfig`` or, for the 1-D GP prior, its kernel name.
    """
    cfg = TrainConfig(kernel=prior) if isinstance(prior, str) else prior
    sampler = make_sampler(cfg, seed)
    values = []
    net.eval()
    with torch.no_grad():
        for _ in range(num_batches):
            b = sampler.sample(batch_size)
            xc, yc, xt, yt = (t.to(device) for t in (b.xc, b.yc, b.xt, b.yt))
            task_net = _for_batch(net, b)
            state = task_net.encode(xc, yc)
            ll = (
                task_net.joint_log_likelihood(state, xt, yt)
                if net.cfg.joint_head
                else task_net.log_likelihood(state, xt, yt)
            )
            values.append(ll.cpu())
    net.train()
    v = torch.cat(values).double()
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item()


def _for_batch(net: NeuralProcess, batch) -> NeuralProcess:
    """``net`` for a batch's tasks: ``net.for_task_dim`` of a BO prior batch's own dimension
    (its inputs are zero-padded beyond it), the network itself for other priors."""
    dim = getattr(batch, "dim", None)
    return net if dim is None else net.for_task_dim(dim)


def _lr_factor(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def train(
    cfg: TrainConfig, out: str | os.PathLike, progress: bool = True, stop_after: int | None = None
) -> Path | None:
    """Train (or resume) a run in ``out``.

    Args:
        cfg: the run's settings (must equal those of an existing ``last.pt``).
        out: run directory.
        progress: show a progress bar with the loss and steps/s.
        stop_after: stop (after saving ``last.pt``) once this step is reached, as an
            interruption would; the run resumes from there.

    Returns:
        The path of the final ``model.pt``, or ``None`` when stopped early.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    last = out / "last.pt"
    torch.manual_seed(cfg.seed)
    net = build_network(cfg.arch, cfg.model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sampler = make_sampler(cfg, cfg.seed)
    step, wall, curve = 0, 0.0, []
    if last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        if not _same_config(ckpt["train_config"], cfg):
            raise ValueError(
                f"{last} was written by a different configuration:\n{ckpt['train_config']}\n"
                f"vs now\n{asdict(cfg)}\nuse another --out or the same settings"
            )
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sampler.gen.set_state(ckpt["sampler_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, wall, curve = ckpt["step"], ckpt["wall_time"], ckpt["curve"]
        if ckpt["train_config"].get("steps", cfg.steps) != cfg.steps:
            print(
                f"resuming at step {step} with a new step total: "
                f"{ckpt['train_config']['steps']} -> {cfg.steps}"
            )
    elif cfg.init_from:
        _warm_start(net, cfg)

    def save_last() -> None:
        tmp = out / "last.pt.tmp"
        torch.save(
            {
                "train_config": asdict(cfg),
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "sampler_rng": sampler.gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "wall_time": wall,
                "curve": curve,
            },
            tmp,
        )
        os.replace(tmp, last)

    def write_curve() -> None:
        with open(out / "curve.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "wall_time_s", "heldout_ll", "heldout_se"])
            w.writerows(curve)

    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=5,
        desc=f"train {out.name}",
    )
    t0, ema = time.perf_counter(), None
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg.steps)
        b = sampler.sample(cfg.batch_size)
        losses = _for_batch(net, b).task_losses(*(t.to(device) for t in (b.xc, b.yc, b.xt, b.yt)))
        loss = (soft_cap(losses, cfg.loss_cap) if cfg.loss_cap > 0 else losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        now = time.perf_counter()
        wall, t0 = wall + (now - t0), now
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ll, se = evaluate(net, cfg, cfg.eval_batches, device=device)
            curve.append([step, round(wall, 1), round(ll, 4), round(se, 4)])
            bar.write(f"step {step}: held-out LL {ll:.3f} +- {se:.3f} ({wall / 60:.1f} min)")
            write_curve()
            t0 = time.perf_counter()  # evaluation time is not training time
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after:
            save_last()
        if step == stop_after:
            bar.close()
            return None
    bar.close()
    write_curve()
    card = {
        "prior": describe_prior(cfg),
        "steps": step,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "schedule": "cosine to 0",
        "grad_clip": cfg.grad_clip or None,
        "loss_cap": cfg.loss_cap or None,
        "init_from": cfg.init_from or None,
        "seed": cfg.seed,
        "wall_time_s": round(wall, 1),
        "hardware": hardware(),
        "torch": torch.__version__,
        "heldout_curve": curve,
    }
    final = out / "model.pt"
    save_checkpoint(net.cpu(), final, card)
    return final


def _warm_start(net: NeuralProcess, cfg: TrainConfig) -> None:
    """Copy the weights of ``cfg.init_from`` into ``net``.

    The source is a checkpoint (``.pt`` with its card) or another run's ``last.pt``; its
    architecture and config must equal the run's, except that ``dim_x`` may grow
    (``widen_inputs``), regression, polynomial and hypothesis memories may be added, and a
    hypothesis memory may be redrawn with other ``hypothesis_count`` / ``hypothesis_features``
    and may change its ``hypothesis_exact_points`` and ``hypothesis_task_dim``. A network may
    become ``hypothesis_residual``: its head's mean and std outputs are then zeroed, so it
    starts as its hypothesis readout.
    """
    source = _source_network(cfg.init_from)
    # dim_x may grow; a hypothesis memory's exact small-context readout has no weights
    # nor does drawing its bank for each task's own dimension (the same draws, rescaled)
    allowed = {
        "dim_x": net.cfg.dim_x,
        "hypothesis_exact_points": net.cfg.hypothesis_exact_points,
        "hypothesis_task_dim": net.cfg.hypothesis_task_dim,
    }
    if not source.cfg.hypothesis_residual:  # the readout may become the head's base
        allowed["hypothesis_residual"] = net.cfg.hypothesis_residual
    if not source.cfg.regression_features:  # a regression memory may be added
        allowed.update({k: getattr(net.cfg, k) for k in _REGRESSION_FIELDS})
    if not source.cfg.polynomial_memory:  # and a polynomial one (no weights of its own)
        allowed["polynomial_memory"] = net.cfg.polynomial_memory
    if not source.cfg.hypothesis_count or net.cfg.hypothesis_count:
        # and a hypothesis one, or the source's redrawn at another size: its hypotheses and
        # features are fixed buffers, and its readout's width does not depend on them
        allowed.update({k: getattr(net.cfg, k) for k in _HYPOTHESIS_FIELDS})
    if source.arch != net.arch or replace(source.cfg, **allowed) != net.cfg:
        raise ValueError(
            f"--init-from {cfg.init_from} holds a {source.arch} network with {source.cfg}, but "
            f"this run builds a {net.arch} network with {net.cfg}; pass the same --arch/--model "
            "(only dim_x may grow, regression, polynomial or hypothesis memories may be added, "
            "and a hypothesis memory may change size)"
        )
    if source.cfg.dim_x > net.cfg.dim_x:
        raise ValueError(
            f"--init-from {cfg.init_from} takes dim_x={source.cfg.dim_x} inputs, more than this "
            f"run's {net.cfg.dim_x}"
        )
    redraw = bool(source.cfg.hypothesis_count) and any(
        getattr(source.cfg, k) != getattr(net.cfg, k) for k in _HYPOTHESIS_FIELDS
    )
    net.load_state_dict(
        widen_inputs(
            source.state_dict(),
            net.state_dict(),
            source.cfg,
            net.cfg.dim_x,
            redraw_hypotheses=redraw,
        )
    )
    if net.cfg.hypothesis_residual and not source.cfg.hypothesis_residual:
        # the head's mean and std outputs start at zero: the network starts as its readout
        last = net.head[-1]
        with torch.no_grad():
            last.weight[:3].zero_()
            last.bias[:3].zero_()


_REGRESSION_FIELDS = ("regression_features", "regression_lengthscales", "regression_noise")
_HYPOTHESIS_FIELDS = (
    "hypothesis_count",
    "hypothesis_features",
    "hypothesis_short_share",
    "hypothesis_prior_dim",
)


def _source_network(path: str) -> NeuralProcess:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(blob, dict) and "train_config" in blob:  # a run's last.pt
        tc = blob["train_config"]
        net = build_network(tc.get("arch", "cmanp"), tc.get("model", {}))
        net.load_state_dict(blob["model"])
        return net
    return load_checkpoint(path)


def widen_inputs(
    source: dict,
    target: dict,
    source_cfg: CMANPConfig,
    dim_x: int | None = None,
    redraw_hypotheses: bool = False,
) -> dict:
    """``source`` weights in a network with more inputs (``target``'s shapes).

    The new input dimensions start switched off in the raw-x columns of both embedders (zero
    weights, so the copied network computes the same features of the old dimensions) and with
    ``target``'s freshly drawn rows of the Fourier matrix; every other weight is copied. A
    network trained on d <= 2 thus starts a run on larger d from what it has learned (``dim_x``:
    the target's input dimension; ``None`` when no regression memory is added). A
    regression, polynomial or hypothesis memory new to the target (``cmanp_bo.nn.regression``)
    keeps its fresh initialisation, and its readout enters the query embedder through zero
    weights, so the widened network predicts exactly what the source did. A hypothesis memory
    whose size changed, or any with ``redraw_hypotheses`` (its bank's settings changed), takes
    ``target``'s draws (the same readout, from another bank).
    """
    d_old = source_cfg.dim_x
    if dim_x is None:  # without a regression memory the embedders' growth is all new inputs
        dim_x = (
            d_old
            + target["embed_query.0.weight"].shape[1]
            - source["embed_query.0.weight"].shape[1]
        )
    out = {}
    for key, new in target.items():
        if key not in source:
            if not key.startswith(("regression.", "hypothesis.")):
                raise ValueError(f"cannot widen: {key} is not in the source network")
            out[key] = new.clone()
            continue
        value = source[key]
        if key.startswith("hypothesis.") and (redraw_hypotheses or value.shape != new.shape):
            out[key] = new.clone()  # a hypothesis bank redrawn
        elif value.shape == new.shape:
            out[key] = value.clone()
        elif key == "fourier_matrix":
            out[key] = torch.cat([value, new[d_old:]], dim=0)
        elif key in ("embed_context.0.weight", "embed_query.0.weight"):
            grow_x = dim_x - d_old
            grow_rest = new.shape[1] - value.shape[1] - grow_x
            if grow_rest and key != "embed_query.0.weight":
                raise ValueError(f"cannot widen {key}: {tuple(value.shape)} -> {tuple(new.shape)}")
            parts = [value[:, :d_old], value.new_zeros(value.shape[0], grow_x), value[:, d_old:]]
            parts.append(value.new_zeros(value.shape[0], grow_rest))
            out[key] = torch.cat(parts, dim=1)
        else:
            raise ValueError(f"cannot widen {key}: {tuple(value.shape)} -> {tuple(new.shape)}")
    unused = set(source) - set(target)
    if unused:
        raise ValueError(f"cannot widen: the target network has no {sorted(unused)}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (resumes if it holds last.pt)")
    p.add_argument(
        "--arch",
        default="cmanp",
        choices=ARCHITECTURES,
        help="network: cmanp, or a re-encoding peer (tnp: full attention, lbanp: latent "
        "bottleneck); all take the --model config",
    )
    p.add_argument("--kernel", default="rbf", choices=["rbf", "matern", "periodic"])
    p.add_argument("--prior", default="gp1d", choices=PRIORS)
    p.add_argument(
        "--prior-options",
        default="{}",
        help="JSON of BOPriorSampler options for --prior bo, e.g. '{\"max_dim\": 10}'",
    )
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument(
        "--grad-clip", type=float, default=0.0, help="max gradient norm (0: no clipping)"
    )
    p.add_argument(
        "--loss-cap",
        type=float,
        default=0.0,
        help="soft cap (nats/point) on each task's loss, cap*asinh(loss/cap), against the "
        "heavy-tailed losses of tasks framed from 1-3 points (0: no cap)",
    )
    p.add_argument(
        "--init-from",
        default="",
        help="checkpoint (.pt with its model card, or a run's last.pt) whose weights start a "
        "new run; same --arch; --model overrides its config, where only dim_x may change "
        "(new input dimensions start switched off), memories may be added and the "
        "hypothesis memory's size may change (its bank is redrawn)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--model",
        default="{}",
        help='JSON of CMANPConfig overrides, e.g. \'{"num_layers": 4, "joint_head": true}\'',
    )


def run_from_args(args: argparse.Namespace) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = json.loads(args.model)
    if args.init_from:  # --model overrides the source's config (e.g. a larger dim_x)
        if not Path(args.init_from).is_file():
            raise SystemExit(f"--init-from {args.init_from}: no such checkpoint file")
        model = {**_source_network(args.init_from).cfg.to_dict(), **model}
    cfg = TrainConfig(
        kernel=args.kernel,
        prior=args.prior,
        prior_options=json.loads(args.prior_options),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        checkpoint_every=args.checkpoint_every,
        model=model,
        grad_clip=args.grad_clip,
        arch=args.arch,
        loss_cap=args.loss_cap,
        init_from=args.init_from,
    )
    network_class(cfg.arch)  # fail early on a bad architecture or prior
    CMANPConfig(**cfg.model)
    make_sampler(cfg, 0)
    if cfg.loss_cap < 0:
        raise SystemExit(f"--loss-cap must be >= 0, got {cfg.loss_cap}")
    if cfg.init_from and not Path(cfg.init_from).is_file():
        raise SystemExit(f"--init-from {cfg.init_from}: no such checkpoint file")
    path = train(cfg, args.out)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    main()
