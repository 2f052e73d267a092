"""Promises about the repository itself: CI runs the README's command; no licensed data is tracked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    main_command, test_command = readme_commands()
    assert "fedrec" in main_command and "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_no_dataset_files_are_tracked() -> None:
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    licensed = re.compile(r"(^|/)(u\.data|u\.item|ratings\.(dat|csv)|movies\.(dat|csv)|Beauty\.txt)$")
    assert not [name for name in tracked.splitlines() if licensed.search(name)]


def test_recsys_core_never_imports_flower() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "recsys_core").rglob("*.py")
        if re.search(r"^\s*(import|from)\s+flwr\b", path.read_text(), flags=re.M)
    ]
    assert offenders == []


def test_test_modules_have_unique_names() -> None:
    # pytest's default import mode imports test modules by basename: two of the same name
    # in different folders stop collection ("import file mismatch") on a clean checkout.
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
