"""Imports point one way: the import-linter contracts in pyproject.toml ([tool.importlinter]) hold.

`cli` on top; `compress`; `engine` and `deploy`; the model registry, checkpoint IO and weight downloads below them;
`models` and `data` at the bottom and independent of each other; the deployed runtime free of torch and models."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # its own process: import-linter builds the import graph by parsing the package, with the repo on sys.path
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                        "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout
