"""The managed run's pure rules: the budget before a rental, what to do about a lost server, what makes two
failures the same, and whether an experiment's code can be sharded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_project
from tether.config import load
from tether.managed import budget_refusal, failure_signature, recovery_action, uses_checkpoint


def test_budget_counts_spent_committed_and_the_new_rental() -> None:
    assert budget_refusal(None, 100.0, [], 1.0, 1.0) is None
    assert budget_refusal(1.0, 0.2, [(0.3, 1.0)], 0.4, 1.0) is None  # 0.2 + 0.3 + 0.4 = 0.9
    why = budget_refusal(1.0, 0.2, [(0.3, 1.0)], 0.6, 1.0)
    assert why is not None and "$1.1000" in why and "past --max-usd $1.0000" in why


@pytest.mark.parametrize(
    ("state", "restarted", "silent", "own", "expected"),
    [
        ("running", False, None, False, "ok"),
        ("preempted", False, None, False, "restart"),
        ("stopped", False, None, False, "restart"),
        ("preempted", True, None, False, "retire"),  # a start did not bring it back: rent another
        ("gone", False, None, False, "replace"),
        ("exited", False, None, False, "retire"),
        ("loading", False, 5.0, False, "wait"),
        ("running", False, 10.0, False, "wait"),  # silent, not yet past the deadline
        ("running", False, 400.0, False, "retire"),
        (None, False, 4000.0, True, "wait"),  # a host the user owns is never replaced
        (None, False, None, True, "ok"),
    ],
)
def test_recovery_action(state: str | None, restarted: bool, silent: float | None, own: bool, expected: str) -> None:
    assert recovery_action(state, restarted, silent, 300.0, own) == expected


def test_a_failure_is_known_by_status_exit_code_and_the_last_line_the_experiment_wrote() -> None:
    tail = "Traceback (most recent call last):\n  ...\nValueError: bad item i007\n[tether] run x failed (exit code 1)\n"
    assert failure_signature(1, "failed", tail) == "failed (exit code 1): ValueError: bad item i007"
    assert failure_signature(137, "dead", None) == "dead (exit code 137)"


def test_checkpoint_usage_is_read_from_the_command_and_the_modules_it_imports(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p")
    project = load(root / "tether.toml")
    assert uses_checkpoint(project, project.experiment("exp")) == (True, "exp.py")
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "lib.py").write_text("from tether.checkpoint import Checkpoint\n")
    (root / "main.py").write_text("import pkg.lib\n")
    (root / "plain.py").write_text("import json\n")
    exp = project.experiment("exp")
    assert uses_checkpoint(project, exp.model_copy(update={"command": ["python3", "main.py"]}))[0] is True
    assert uses_checkpoint(project, exp.model_copy(update={"command": ["python", "-m", "pkg.lib"]}))[0] is True
    found, why = uses_checkpoint(project, exp.model_copy(update={"command": ["python3", "plain.py"]}))
    assert not found and why == "plain.py does not import tether.checkpoint"
    found, why = uses_checkpoint(project, exp.model_copy(update={"command": ["bash", "run.sh"]}))
    assert not found and "names no Python file" in why
