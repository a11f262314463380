"""experiments/run_on_tree.py: a script run against another checkout imports that checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_script_imports_the_other_tree_and_a_tree_without_the_package_is_refused(tmp_path):
    tree = tmp_path / "tree"
    for pkg in ("cmanp_bo", "surrogates"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("pretrained"))
    script = tmp_path / "where.py"
    script.write_text("import cmanp_bo.frame, surrogates\nprint(cmanp_bo.frame.__file__)\n")
    runner = [sys.executable, str(ROOT / "experiments" / "run_on_tree.py")]
    out = subprocess.run([*runner, str(tree), str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (tree / "cmanp_bo" / "frame.py").resolve()
    bad = subprocess.run([*runner, str(tmp_path), str(script)], capture_output=True, text=True)
    assert bad.returncode != 0 and "has no cmanp_bo package" in bad.stderr
    with pytest.raises(subprocess.CalledProcessError):  # no script given
        subprocess.run([*runner, str(tree)], check=True, capture_output=True)
