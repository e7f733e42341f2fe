"""Starting, watching and stopping runs on a target (this machine or a server), the same way everywhere.

A run is the server-side wrapper (``python3 -m tether.server run``) in a detached tmux session named
``tether-<run id>``; the wrapper keeps the run's record on the target under ``<root>/.tether/runs/<id>/``, so the
record survives this machine going away. Local state keeps a copy that :func:`progress` refreshes.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tether.config import ExperimentConfig, Project
from tether.errors import CommandFailed, TetherError
from tether.state import RunRecord, State
from tether.targets import Target
from tether.transport import tmux

FINAL_STATES = {"completed", "failed", "cancelled", "refused", "dead"}
START_CHECK_S = 3.0


def new_run_id(experiment: str, now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC).strftime("%Y%m%d-%H%M%S")
    return f"{experiment}-{stamp}-{secrets.token_hex(2)}"


def session_name(run_id: str) -> str:
    """tmux session of a run (tmux refuses '.' and ':' in names)."""
    return "tether-" + "".join(c if c.isalnum() or c in "_-" else "_" for c in run_id)


def wrapper_argv(
    target: Target,
    run_id: str,
    name: str,
    exp: ExperimentConfig,
    argv: Sequence[str],
    *,
    wait_s: float | None = None,
) -> list[str]:
    """The argv of the run wrapper for one run (pure)."""
    out = [
        *target.server_argv,
        "run",
        "--root",
        target.root,
        "--run-id",
        run_id,
        "--experiment",
        name,
        "--cwd",
        target.code_dir,
        "--results",
        exp.results,
        "--gpu-gb",
        f"{exp.gpu_gb:g}",
    ]
    if target.registry is not None:
        out += ["--registry", target.registry]
    if wait_s is not None:
        out += ["--wait", f"{wait_s:g}"]
    return [*out, "--", *argv]


@dataclass(frozen=True)
class Started:
    run: RunRecord
    status: str


def start(
    project: Project,
    state: State,
    target: Target,
    name: str,
    extra_args: Sequence[str] = (),
    *,
    wait_s: float | None = None,
) -> Started:
    """Start experiment ``name`` detached on ``target`` and return at once with its run id.

    Waits up to a few seconds for the wrapper to report: a command that does not exist, or a GPU admission refusal,
    is reported as a failure here (with the log tail), not as a run that looks alive.
    """
    exp = project.experiment(name)
    run_id = new_run_id(name)
    argv = [*exp.command, *extra_args]
    session = session_name(run_id)
    target.transport.run(["mkdir", "-p", f"{target.root}/.tether/runs"])
    tmux.TmuxSessions(target.transport, target.root).start(
        session, wrapper_argv(target, run_id, name, exp, argv, wait_s=wait_s), cwd=target.code_dir
    )
    run_dir = f"{target.root}/.tether/runs/{run_id}"
    record = RunRecord(
        id=run_id,
        experiment=name,
        host=target.name,
        argv=argv,
        cwd=target.code_dir,
        results_dir=f"{target.code_dir}/{exp.results}",
        log_path=f"{run_dir}/log",
        session=session,
        started=time.time(),
        ended=None,
        exit_code=None,
        status="starting",
    )
    state.add_run(record)
    status = _await_start(target, run_id, state)
    return Started(state.find_run(run_id), status)


def _read_run_json(target: Target, run_id: str) -> dict[str, Any] | None:
    path = f"{target.root}/.tether/runs/{run_id}/run.json"
    result = target.transport.run(["cat", path], check=False)
    if result.returncode != 0:
        return None
    try:
        doc = json.loads(result.text())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _await_start(target: Target, run_id: str, state: State) -> str:
    deadline = time.monotonic() + START_CHECK_S
    delay = 0.05
    doc: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        doc = _read_run_json(target, run_id)
        if doc is not None and doc.get("status") != "starting":
            break
        time.sleep(delay)  # polling a remote file; nothing local to wait on
        delay = min(delay * 2, 0.5)
    if doc is None:
        return "starting"
    status = str(doc.get("status"))
    state.update_run(run_id, status=status, ended=doc.get("ended"), exit_code=doc.get("exit_code"))
    if status in ("failed", "refused"):
        log = target.transport.run(["tail", "-n", "20", str(doc.get("log"))], check=False).text()
        raise CommandFailed(
            f"Run {run_id} on {target.name} {status} at once (exit code {doc.get('exit_code')}).",
            "Its log ends with:\n" + log.rstrip(),
            returncode=doc.get("exit_code"),
            output=log,
        )
    return status


def scan(target: Target) -> dict[str, Any]:
    """Every run on ``target`` with its progress, in one round trip."""
    result = target.transport.run([*target.server_argv, "progress", "--root", target.root])
    try:
        doc = json.loads(result.text())
    except ValueError:
        raise TetherError(
            f"The progress scan on {target.name} printed something that is not JSON.",
            "Run `tether up` again to reinstall tether's server side there.",
        ) from None
    if not isinstance(doc, dict):
        raise TetherError(f"The progress scan on {target.name} returned an unexpected document.")
    return doc


def refresh(state: State, target: Target, doc: dict[str, Any]) -> None:
    """Copy the statuses a scan found into local state."""
    known = {r.id: r for r in state.runs(host=target.name)}
    for run in doc.get("runs", []):
        rec = known.get(run.get("id"))
        if rec is None:
            continue
        if rec.status != run.get("status") or rec.exit_code != run.get("exit_code"):
            state.update_run(
                rec.id, status=str(run.get("status")), ended=run.get("ended"), exit_code=run.get("exit_code")
            )


def cancel(state: State, target: Target, run: RunRecord) -> dict[str, Any]:
    result = target.transport.run(
        [*target.server_argv, "cancel", "--root", target.root, "--run-id", run.id], check=False
    )
    try:
        doc: dict[str, Any] = json.loads(result.text())
    except ValueError:
        raise CommandFailed(f"Could not cancel run {run.id} on {target.name}.", result.output_tail()) from None
    return doc
