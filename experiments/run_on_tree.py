"""Run an experiment script against another checkout of the code (e.g. an old commit), so that a
cost measurement compares code versions on the same machine and the same points.

    git worktree add /tmp/old f22da55
    python experiments/run_on_tree.py /tmp/old experiments/acquisition_cost.py --out OUT.json

``TREE`` goes first on ``sys.path`` (the editable install's finder comes after the path finder),
so ``cmanp_bo`` and ``surrogates`` come from ``TREE``; it stops if they do not. The script itself is
this checkout's (its own folder on the path for its helpers).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def use_tree(tree: Path) -> None:
    """Import ``cmanp_bo`` and ``surrogates`` from ``tree`` from now on (``SystemExit`` if not)."""
    tree = tree.resolve()
    if not (tree / "cmanp_bo" / "__init__.py").is_file():
        raise SystemExit(f"{tree} has no cmanp_bo package")
    for name in [m for m in sys.modules if m.split(".")[0] in ("cmanp_bo", "surrogates")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    import cmanp_bo
    import surrogates

    for module in (cmanp_bo, surrogates):
        if not Path(module.__file__).resolve().is_relative_to(tree):
            raise SystemExit(f"{module.__name__} still imports from {module.__file__}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        raise SystemExit(__doc__)
    tree, script = Path(argv[0]), Path(argv[1]).resolve()
    use_tree(tree)
    sys.path.insert(1, str(script.parent))
    sys.argv = [str(script), *argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
