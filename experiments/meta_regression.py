"""The paper's 1-D GP meta-regression benchmark for the shipped CMANP and CMANP-AND checkpoints.

    python experiments/meta_regression.py                       # 3000 x 16 tasks per kernel
    python experiments/meta_regression.py --batches 100         # quick look

Writes experiments/results/meta_regression.{json,md} and learning_curve.{csv,png}.
Training the checkpoints: see cmanp_bo/pretrained/README.md for the exact commands.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cmanp_bo import pretrained  # noqa: E402
from cmanp_bo.checkpoint import card_path, load_checkpoint, read_card  # noqa: E402
from cmanp_bo.gp_benchmark import EVAL_SEED, evaluate_models, markdown_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batches", type=int, default=3000)
    p.add_argument("--cmanp", default=str(pretrained.HERE / "gp1d-rbf-cmanp.pt"))
    p.add_argument("--cmanp-and", default=str(pretrained.HERE / "gp1d-rbf-cmanp-and.pt"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--update-cards",
        action="store_true",
        help="write the scores into the model cards beside the checkpoints",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    paths = {"CMANP": args.cmanp, "CMANP-AND": args.cmanp_and}
    models = {name: load_checkpoint(path) for name, path in paths.items()}
    results = evaluate_models(models, batches=args.batches)
    table = markdown_table(results)
    print(table)
    cards = {name: read_card(path) for name, path in paths.items()}
    (out / "meta_regression.md").write_text(table + "\n")
    (out / "meta_regression.json").write_text(
        json.dumps(
            {
                "protocol": "paper 1-D GP: x~U[-2,2], Nc~U{3..46}, Nt~U{3..49-Nc}, ls~U[0.1,0.6), "
                "scale~U[0.1,1.0), noise 0.02; models trained on RBF",
                "eval_seed": EVAL_SEED,
                "batches": args.batches,
                "batch_size": 16,
                "results": {
                    row: {k: asdict(s) for k, s in v.items()} for row, v in results.items()
                },
                "checkpoints": {
                    name: {
                        k: cards[name].get(k)
                        for k in ("steps", "wall_time_s", "hardware", "config", "sha256")
                    }
                    for name in paths
                },
            },
            indent=2,
        )
        + "\n"
    )

    if args.update_cards:
        for name, path in paths.items():
            card = read_card(path)
            card["eval"] = {
                "benchmark": f"paper 1-D GP protocol, {args.batches} x 16 tasks per kernel, "
                f"seed {EVAL_SEED}, mean target LL per point +- SE",
                **{
                    f"{row} / {k}": str(s)
                    for row, v in results.items()
                    if row.startswith(name + " ") or row == name
                    for k, s in v.items()
                },
                **{
                    f"exact GP ceiling / {k}": str(s)
                    for k, s in results["Exact GP, true hyperparameters"].items()
                },
            }
            card_path(path).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")

    # learning curves (held-out LL on 50 x 16 RBF tasks, seed 10000, logged during training)
    fig, ax = plt.subplots(figsize=(6, 4))
    with open(out / "learning_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "step", "wall_time_s", "heldout_ll", "heldout_se"])
        for name, card in cards.items():
            curve = card.get("heldout_curve", [])
            w.writerows([name, *row] for row in curve)
            if curve:
                steps, _, ll, se = zip(*curve)
                label = f"{name} ({'joint' if 'AND' in name else 'marginal'} LL)"
                ax.errorbar(steps, ll, yerr=se, label=label, capsize=2)
    ceiling = results["Exact GP, true hyperparameters"]["rbf"].mean
    ax.axhline(ceiling, color="k", ls="--", label=f"exact GP ceiling ({ceiling:.2f})")
    ax.axhline(1.24, color="C0", ls=":", label="paper CMANP (1.24, 100k steps)")
    ax.axhline(1.48, color="C1", ls=":", label="paper CMANP-AND (1.48, 100k steps)")
    ax.set_xlabel("training step (batch 16)")
    ax.set_ylabel("held-out target LL (RBF)")
    ax.set_title("CMANP meta-training on a 2-core CPU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
