"""Whose runs a view shows: this project's, or every project's (``--all``, and outside any project).

``progress``, ``status``, the dashboard and ``runs`` all ask :class:`Scope`; nothing else decides it. Servers are
shared between projects, so a server's scan lists every project's runs there; a run is a project's when:

- local state knows it (tether started it from this machine): the project recorded with it, the folder of its
  ``tether.toml`` (:attr:`tether.state.RunRecord.project`). A record older than that column: a run here in the
  project's folder, or a server run of one of its experiments;
- local state does not know it (started from another machine, or its record forgotten): it ran in the project's
  code folder on that server (its results folder lies inside it), the folder ``tether push`` fills with this
  project's code. A run whose record cannot be read (``broken``) names no folder: every project sees it.

A managed run is its project's when one of its shards' current runs is (before any has started: one of its experiments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.hosts import LOCAL

if TYPE_CHECKING:
    from tether.config import Project
    from tether.state import ManagedRunRecord, RunRecord, State
    from tether.vocab import RunInfo

ALL_PROJECTS = "all projects"


@dataclass(frozen=True)
class Scope:
    """The runs a view shows: ``project``'s, or every project's when ``project`` is None."""

    project: Project | None
    outside: bool = False
    """No ``tether.toml`` here: every project's runs are shown (the views say so)."""

    @classmethod
    def of(cls, project: Project, every_project: bool = False) -> Scope:
        """The one scope rule: this project's runs, unless ``--all`` or outside any project."""
        if not project.found:
            return cls(None, outside=True)
        return cls(None if every_project else project)

    @property
    def every(self) -> bool:
        return self.project is None

    @property
    def label(self) -> str:
        """What a title names: the project, or "all projects"."""
        return ALL_PROJECTS if self.project is None else self.project.declared_name

    def sentence(self) -> str | None:
        """What the terminal says about what is shown, when it is not simply this project's runs."""
        if self.outside:
            return "No tether.toml here: showing every project's runs."
        return None

    def to_json(self) -> dict[str, Any]:
        return {"project": None if self.project is None else self.project.declared_name, "all": self.project is None}

    # --- the rule ---------------------------------------------------------------------------------------------
    def owns_record(self, rec: RunRecord) -> bool:
        """Whether a run local state knows is in scope (see the module docstring)."""
        project = self.project
        if project is None:
            return True
        if rec.project is not None:
            return rec.project == str(project.root)
        if rec.host == LOCAL:
            return rec.cwd == str(project.root)
        return rec.experiment in project.config.experiments

    def owns_scanned(self, run: RunInfo, rec: RunRecord | None, code_dir: str) -> bool:
        """Whether a run a scan found on a target (whose code folder for this project is ``code_dir``) is in
        scope; ``rec``: its record in local state, if any."""
        if self.project is None:
            return True
        if rec is not None:
            return self.owns_record(rec)
        folder = run.results_dir
        if folder is None:
            return True  # a record that cannot be read names no folder: whoever's it is, every project sees it
        return folder == code_dir or folder.startswith(code_dir.rstrip("/") + "/")

    def select(self, state: State, host: str, code_dir: str, found: Sequence[RunInfo]) -> list[RunInfo]:
        """The runs of one host's scan that are in scope."""
        if self.project is None:
            return list(found)
        known = {r.id: r for r in state.runs(host=host)}
        return [r for r in found if self.owns_scanned(r, known.get(r.id), code_dir)]

    def hosts(self, state: State) -> list[str]:
        """Every host where local state has a run in scope, sorted."""
        return sorted({r.host for r in state.runs() if self.owns_record(r)})

    def records(self, state: State, experiment: str | None = None) -> list[RunRecord]:
        """The runs local state knows that are in scope (of one experiment if given), oldest first."""
        return [r for r in state.runs(experiment=experiment) if self.owns_record(r)]

    def owns_managed(self, state: State, rec: ManagedRunRecord) -> bool:
        """Whether a managed run is in scope: one of its shards' runs is (none yet: one of the project's
        experiments)."""
        project = self.project
        if project is None:
            return True
        current = {s.run for s in state.managed_shards(rec.id) if s.run}
        shards = [r for r in state.runs(experiment=rec.experiment) if r.id in current]
        if shards:
            return any(self.owns_record(r) for r in shards)
        return rec.experiment in project.config.experiments

    def managed_ids(self, state: State) -> set[str]:
        """The ids of the managed runs in scope."""
        return {r.id for r in state.managed_runs() if self.owns_managed(state, r)}
