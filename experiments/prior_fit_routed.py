"""Issue 4's targets for the networks ``CMANPModel`` routes each d to, from per-network reports.

``prior_fit.py`` runs one network per d over a grid; the routed networks were measured in
separate runs on the same held-out tasks (the task pools depend on d and the seed only). This
script takes each d's cells from the report of the network that d routes to and recounts the
targets (pass/fail per cell, worst shortfall), so the README's verdicts come from one place:

    python experiments/prior_fit_routed.py

Reads ``experiments/results/prior_fit*.json``; writes ``prior_fit_routed.json`` and prints a
summary. Edit ``SOURCES`` when the routing changes (``cmanp-bo checkpoints`` prints it).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# d -> (report, the network it holds for that d)
# (stop 36: bo-d3-6-resid serves d = 2..6, its bank drawn for each task's d; at d = 6 that is
# the bank it was shipped with in stop 35, so its d = 6 cells are that run's)
SOURCES = {
    1: ("prior_fit_bo_d1_2_reg.json", "bo-d1-2-reg"),
    2: ("prior_fit_bo_d3_6_resid_task.json", "bo-d3-6-resid"),
    4: ("prior_fit_bo_d3_6_resid_task.json", "bo-d3-6-resid"),
    6: ("prior_fit_bo_d3_6_hyp_resid64.json", "bo-d3-6-resid"),
    8: ("prior_fit_bo_d7_10_poly.json", "bo-d7-10-poly"),
    10: ("prior_fit_bo_d7_10_poly.json", "bo-d7-10-poly"),
}


def routed_targets(sources: dict[int, tuple[str, str]] = SOURCES, results: Path = RESULTS) -> dict:
    """Per target: the cells of every d from its routed network's report, recounted."""
    reports = {name: json.loads((results / name).read_text()) for name, _ in sources.values()}
    first = reports[sources[min(sources)][0]]["targets"]  # names and descriptions of the targets
    out: dict[str, dict] = {}
    for target in first:
        cells, missing = [], []
        for d, (name, network) in sorted(sources.items()):
            check = reports[name]["targets"][target]
            cells += [{**c, "network": network} for c in check["cells"] if c["d"] == d]
            missing += [c for c in check["not_evaluated"] if c[0] == d]
        judged = [c for c in cells if not c.get("reference")]
        out[target] = {
            "description": first[target]["description"],
            "pass": all(c["pass"] for c in judged) if judged else None,
            "cells_judged": len(judged),
            "cells_missed": sum(not c["pass"] for c in judged),
            "worst_shortfall": max((c["shortfall"] for c in judged), default=None),
            "not_evaluated": missing,
            "cells": cells,
        }
    return {"sources": {d: {"report": r, "network": n} for d, (r, n) in sources.items()}, **out}


def main() -> None:
    summary = routed_targets()
    (RESULTS / "prior_fit_routed.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, t in summary.items():
        if name == "sources":
            continue
        missed = [(c["d"], c["n"]) for c in t["cells"] if not c.get("reference") and not c["pass"]]
        print(
            f"{name}: pass={t['pass']} missed {t['cells_missed']} of {t['cells_judged']} "
            f"(worst shortfall {t['worst_shortfall']:.3f}) {missed}"
        )
    print(f"wrote {RESULTS / 'prior_fit_routed.json'}")


if __name__ == "__main__":
    main()
