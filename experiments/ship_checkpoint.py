"""Ship a trained run as a package checkpoint: weights + model card + learning curve.

    python experiments/ship_checkpoint.py runs/bo-default --name bo-default \
        --command "cmanp-bo train ..." --note "..." [--eval experiments/results/prior_fit.json]

Copies ``RUN/model.pt`` to ``cmanp_bo/pretrained/NAME.pt`` (float32, checksummed) with a card that
holds the run's own card (prior, steps, wall time, hardware, held-out curve) plus the command,
the prior's settings, notes and, with ``--eval``, the quality summary of experiments/prior_fit.py.
Writes the held-out log-likelihood vs training time to ``experiments/results/NAME_curve.{csv,png}``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from cmanp_bo.checkpoint import load_checkpoint, read_card, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "cmanp_bo" / "pretrained"
RESULTS = ROOT / "experiments" / "results"


def prior_settings(options: dict) -> dict:
    """Every setting of the BO prior the run used (defaults filled in)."""
    import inspect

    from cmanp_bo.priors.bo import BOPriorSampler

    defaults = {
        k: v.default
        for k, v in inspect.signature(BOPriorSampler).parameters.items()
        if k not in ("seed", "dtype")
    }
    return {**defaults, **options}


def write_curve(curve: list, name: str, out: Path) -> None:
    """The held-out curve as CSV and PNG; nothing for a run without training steps (a redrawn
    hypothesis bank, recipe stage 19), which has no curve of its own."""
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / f"{name}_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "wall_time_s", "heldout_ll", "heldout_se"])
        w.writerows(curve)
    steps, wall, ll, se = zip(*curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([t / 60 for t in wall], ll, yerr=se, capsize=2, marker="o", ms=3)
    ax.set_xlabel("training wall-clock (min)")
    ax.set_ylabel("held-out LL per target (joint)")
    ax.set_title(f"{name}: held-out log-likelihood vs training time")
    for s, t, v in list(zip(steps, wall, ll))[:: max(1, len(steps) // 6)]:
        ax.annotate(f"{s}", (t / 60, v), fontsize=6, textcoords="offset points", xytext=(2, -8))
    fig.tight_layout()
    fig.savefig(out / f"{name}_curve.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="a finished training run folder (holds model.pt)")
    p.add_argument("--name", required=True)
    p.add_argument("--command", required=True, help="the command that trained it")
    p.add_argument("--note", action="append", default=[], help="a line for the card's notes")
    p.add_argument("--eval", type=Path, help="prior_fit summary JSON to put in the card")
    p.add_argument("--hardware", help="override the recorded hardware string")
    p.add_argument(
        "--default-for-dims",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        help="make it CMANPModel's default for d in [LO, HI] (a specialist; the narrowest "
        "range covering d wins over bo-default)",
    )
    p.add_argument(
        "--known-weakness",
        nargs=2,
        metavar=("MIN_DIM", "MESSAGE"),
        help="a measured weakness repeated as a warning when loaded for d >= MIN_DIM",
    )
    p.add_argument(
        "--weights-from",
        metavar="NAME",
        help="the shipped checkpoint (or a training run's folder) whose learned weights a run "
        "without training steps carries unchanged (recipe stages 19, 21, 23 and 25 redraw only "
        "the hypothesis bank); checked tensor by tensor",
    )
    args = p.parse_args()

    model = args.run / "model.pt"
    net = load_checkpoint(model)
    card = read_card(model)
    train_config = None
    if (args.run / "last.pt").exists():
        train_config = torch.load(args.run / "last.pt", weights_only=False)["train_config"]
    card["command"] = args.command
    card["notes"] = args.note
    if train_config:
        card["train_config"] = train_config
    if train_config and train_config.get("prior") == "bo":
        card["prior_settings"] = prior_settings(train_config.get("prior_options", {}))
    if args.hardware:
        card["hardware"] = args.hardware
    if args.eval:
        card["eval"] = json.loads(args.eval.read_text())
    if args.default_for_dims:
        lo, hi = args.default_for_dims
        if not 1 <= lo <= hi <= net.cfg.dim_x:
            p.error(f"--default-for-dims needs 1 <= LO <= HI <= dim_x={net.cfg.dim_x}")
        card["default_for_dims"] = [lo, hi]
    if args.known_weakness:
        card["known_weakness"] = {
            "min_dim": int(args.known_weakness[0]),
            "message": args.known_weakness[1],
        }
    if args.weights_from:
        run = Path(args.weights_from)
        path = run / "model.pt" if run.is_dir() else PRETRAINED / f"{args.weights_from}.pt"
        source = load_checkpoint(path).state_dict()
        source_card = read_card(path)
        for key, value in net.state_dict().items():
            if key.startswith("hypothesis."):
                continue
            if key not in source or not torch.equal(value, source[key]):
                p.error(f"{key} differs from {args.weights_from}'s: the weights are not its own")
        if run.is_dir():  # an unshipped run: its provenance goes into the card
            card["weights_from"] = {
                "run": str(run),
                **{k: source_card.get(k) for k in ("sha256", "steps", "wall_time_s", "hardware")},
                "init_from": source_card.get("init_from"),
            }
        else:
            card["weights_from"] = args.weights_from
    elif card.get("steps", 0) < 1:
        p.error("the run took no training steps: name the checkpoint it carries, --weights-from")
    for key in ("format", "file", "sha256", "arch", "config", "num_parameters"):
        card.pop(key, None)
    dest = PRETRAINED / f"{args.name}.pt"
    written = save_checkpoint(net, dest, card)
    write_curve(card.get("heldout_curve", []), args.name, RESULTS)
    size = dest.stat().st_size / 2**20
    print(f"wrote {dest} ({size:.2f} MiB, sha256 {written['sha256'][:12]}...)")


if __name__ == "__main__":
    main()
