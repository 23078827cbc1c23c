"""The tree is formatted and linted as pyproject.toml's [tool.ruff] says (issue 26): CI fails otherwise."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_passes():
    r = ruff("check", ".")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]


def test_ruff_format_leaves_the_tree_as_it_is():
    r = ruff("format", "--check", ".")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
