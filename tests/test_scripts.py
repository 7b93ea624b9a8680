"""scripts/test: a selection that ran no test fails; one that only one of its two pytest runs holds passes.

The script runs in a copy of its folder layout whose setup does nothing and whose `.venv/bin/python` is a stub
that exits with the status given for each pytest run (the CPU run, then the browser run).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path: Path, cpu_status: int, browser_status: int) -> int:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    (tmp_path / "scripts" / "setup").write_text("true\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/usr/bin/env bash\n"
                      f'case "$*" in *"not browser"*) exit {cpu_status};; *) exit {browser_status};; esac\n')
    python.chmod(0o755)
    return subprocess.run(["bash", str(tmp_path / "scripts" / "test"), "tests/x.py"], capture_output=True,
                          timeout=30).returncode


@pytest.mark.parametrize(("cpu", "browser", "expected"), [
    (0, 0, 0),  # the whole suite (.ci/run)
    (0, 5, 0),  # a CPU test file: the browser run holds none of it
    (5, 0, 0),  # the browser tests alone
    (5, 5, 5),  # a selection that ran nothing
    (1, 0, 1),  # a failure stops it
    (0, 1, 1),
])
def test_scripts_test_fails_a_selection_that_ran_nothing(tmp_path, cpu, browser, expected):
    assert run_script(tmp_path, cpu, browser) == expected
