"""A researcher's first hour, through the real CLI: options before `--` are tether's and a typo is refused with
"did you mean", every configuration problem in one report and in words, a starter that runs as written, `logs -f`
that ends with the run, and the SSH key tether checked on the account being the one ssh uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import Cloud, MakeCloud
from tests.helpers import tether, tether_json, wait_for, wait_status, write_project
from tether import config, config_models, rentals
from tether.errors import ConfigError
from tether.fmt import did_you_mean
from tether.testing.sshd import SshdHost

#: An experiment that writes its arguments to its log as JSON, then waits for a file named by --gate (if given).
ECHO = """\
import json, os, sys, time
print("argv", json.dumps(sys.argv[1:]), flush=True)
if "--gate" in sys.argv:
    gate = sys.argv[sys.argv.index("--gate") + 1]
    while not os.path.exists(gate):
        time.sleep(0.05)
print("after the gate", flush=True)
"""


def _echo_project(root: Path) -> Path:
    project = write_project(root, extra='[experiments.echo]\ncommand = "python3 echo.py"\nresults = "r_echo"\n')
    (project / "echo.py").write_text(ECHO)
    return project


def _runs_dir() -> Path:
    return Path(os.environ["TETHER_HOME"]) / "local" / ".tether" / "runs"


# ------------------------------------------------------------------------------------------ 1. strict options


@pytest.mark.parametrize(("typo", "meant"), [("--lcoal", "--local"), ("--folow", "--follow")])
def test_an_unknown_option_before_the_dashes_is_refused_not_passed_on(tmp_path: Path, typo: str, meant: str) -> None:
    project = _echo_project(tmp_path / "p")
    result = tether("run", "echo", "--local", typo, cwd=project)
    assert result.returncode == 2, result.stderr
    assert f"No such option '{typo}'. Did you mean '{meant}'?" in result.stderr
    assert not _runs_dir().exists()  # nothing ran
    as_json = tether("run", "echo", "--local", typo, "--json", cwd=project)
    doc = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and doc["kind"] == "NoSuchOption" and meant in doc["error"]


def test_a_stray_word_says_that_the_experiments_arguments_go_after_the_dashes(tmp_path: Path) -> None:
    project = _echo_project(tmp_path / "p")
    result = tether("run", "echo", "--local", "fast", cwd=project)
    assert result.returncode == 2
    assert "the experiment's own arguments go after `--`" in result.stderr and "echo -- fast" in result.stderr
    assert not _runs_dir().exists()


def test_what_follows_the_dashes_reaches_the_experiment_unchanged(tmp_path: Path) -> None:
    project = _echo_project(tmp_path / "p")
    args = ["--lcoal", "--follow", "--", "x y"]
    result = tether("run", "echo", "--local", "--follow", "--", *args, cwd=project)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    log = tether("logs", run_id, cwd=project).stdout
    assert f"argv {json.dumps(args)}" in log


def test_a_detached_managed_controller_s_argv_parses_back() -> None:
    from tether.cli.runs_cmd import EXPERIMENT_ARGS, run

    argv = ["exp", "--managed", "--shards", "2", "--sync-every", "2m", "--poll", "10s", "--unreachable-after", "5m"]
    ctx = run.make_context("run", [*argv, "--", "--items", "3", "--managed"])
    assert ctx.params["managed"] is True and ctx.params["shards"] == 2 and ctx.params["poll"] == "10s"
    assert ctx.meta[EXPERIMENT_ARGS] == ("--items", "3", "--managed")
    assert run.make_context("run", [*argv, "--"]).meta[EXPERIMENT_ARGS] == ()


def test_an_unknown_command_gets_did_you_mean(tmp_path: Path) -> None:
    result = tether("prgress", cwd=tmp_path)
    assert result.returncode == 2 and "No such command 'prgress'. Did you mean 'progress'?" in result.stderr
    nothing_close = tether("xyzzy", cwd=tmp_path)
    assert nothing_close.returncode == 2 and "Did you mean" not in nothing_close.stderr
    project = _echo_project(tmp_path / "p")
    experiment = tether("run", "ecoh", "--local", cwd=project)
    assert experiment.returncode == 2 and "Unknown experiment 'ecoh'" in experiment.stderr
    assert "Did you mean 'echo'?" in experiment.stderr


# ------------------------------------------------------------------------------------------ 2. config errors

BAD = """\
[project]
name = "bad name"

[experiment.x]
command = "true"

[experiments.y]
command = "python3 y.py"
itmes = 100
kind = "gpu"

[experiments.z]
items = -1
"""


def test_every_config_problem_is_in_one_report_with_its_line_and_words(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(BAD)
    result = tether("run", "y", "--local", cwd=tmp_path)
    assert result.returncode == 2
    path = tmp_path / "tether.toml"
    expected = [
        f"{path}:2: project.name: 'bad name' is not a valid project name: ' ' may not be in it",
        f"{path}:4: experiment: unknown key; did you mean 'experiments'?",
        f"{path}:9: experiments.y.itmes: unknown key; did you mean 'items'?",
        f"{path}:10: experiments.y.kind: Input should be 'api', 'inference', 'finetune' or 'local'",
        f"{path}:12: experiments.z.command: this key is required",
        f"{path}:13: experiments.z.items: Input should be greater than or equal to 0",
    ]
    assert f"{path} has {len(expected)} problems:" in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, result.stderr)
    assert "more problem" not in result.stderr and "pattern" not in result.stderr
    doc = json.loads(tether("run", "y", "--local", "--json", cwd=tmp_path).stdout)
    assert all(want in doc["error"] for want in expected)


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ('experiment.x.command = "true"\n\n[project]\nname = "p"\n', 1, "experiment"),
        ('[project]\nname = "p"\n[experiments]\nx = { command = "true", itmes = 3 }\n', 4, "experiments.x.itmes"),
        ('[project]\nname = "p"\n[experiment.x]\ncommand = "true"\n', 3, "experiment"),
        ('[project]\nname = "p"\n[hosts.a]\nadress = "h"\n', 4, "hosts.a.adress"),
    ],
)
def test_every_problem_has_a_line_even_inside_a_table_that_does_not_exist(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config_models.validate(path)
    assert f"{path}:{line}: {key}: unknown key; did you mean" in err.value.message


def test_one_problem_is_one_sentence_and_a_key_far_from_any_other_gets_the_table_s_keys(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text('[project]\nname = "p"\n[policy]\nzzz = 1\n')
    with pytest.raises(ConfigError) as err:
        config_models.validate(path)
    assert err.value.message == f"{path}:4: policy.zzz: unknown key."
    assert err.value.hint is not None and "Known keys in [policy]: idle_stop_minutes" in err.value.hint


def test_a_command_of_the_wrong_type_says_what_it_may_be(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text('[project]\nname = "p"\n[experiments.x]\ncommand = 3\n')
    with pytest.raises(ConfigError) as err:
        config_models.validate(path)
    assert "x.command: command must be a string (split as a shell would) or a list of strings" in err.value.message


def test_did_you_mean_names_only_close_words() -> None:
    assert did_you_mean("prgress", ["progress", "push", "pull"]) == " Did you mean 'progress'?"
    assert did_you_mean("xyzzy", ["progress", "push"]) == ""
    assert config.check_project_name("ok-name_1.2") is None
    assert "may not be in it" in (config.check_project_name("a/b") or "")


def test_init_refuses_a_bad_name_in_words_and_writes_nothing(tmp_path: Path) -> None:
    result = tether("init", "--name", "bad name", cwd=tmp_path)
    assert result.returncode == 2
    assert "'bad name' is not a valid project name: ' ' may not be in it" in result.stderr
    assert "nothing was written" in result.stderr and "pattern" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    dashed = tether("init", "--name", "-x", cwd=tmp_path)
    assert dashed.returncode == 2 and "must start with a letter or a digit" in dashed.stderr


# ------------------------------------------------------------------------------------------ 3. the starter


def test_the_starter_runs_as_written(tmp_path: Path) -> None:
    made = tether("init", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "example_experiment.py").is_file()
    result = tether("run", "example", "--local", "--follow", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "results" / "results.json").read_text())
    assert doc["completed"] == doc["total"] == 100
    # The user's own module is never overwritten, not even by --force.
    (tmp_path / "example_experiment.py").write_text("# mine\n")
    again = tether("init", "--force", cwd=tmp_path)
    assert again.returncode == 0 and "left as it is" in again.stderr
    assert (tmp_path / "example_experiment.py").read_text() == "# mine\n"


# ------------------------------------------------------------------------------------------ 4. logs -f


def test_logs_follow_of_a_finished_run_prints_and_exits(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=3)
    run_id = tether("run", "exp", "--local", "--follow", cwd=project).stdout.strip()
    # Before: `tail -F` without a process to watch, forever (this would time out).
    result = tether("logs", run_id, "-f", cwd=project, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "summary 3 0" in result.stdout and f"Run {run_id} completed (exit code 0)." in result.stderr


class _Follower:
    """`tether logs RUN -f` in its own process, its stdout lines collected as they come."""

    def __init__(self, run_id: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tether", "logs", run_id, "-f"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(iter(self.process.stdout.readline, ""))

    def saw(self, word: str) -> bool:
        return any(word in line for line in list(self.lines))

    def end(self) -> tuple[int, str, str]:
        """Wait (with a deadline) for it to exit by itself: exit code, stdout, stderr."""
        try:
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=10)
        assert self.process.stdout is not None and self.process.stderr is not None
        err = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return self.process.returncode, "".join(self.lines), err


def test_logs_follow_ends_when_the_run_ends(tmp_path: Path) -> None:
    project = _echo_project(tmp_path / "p")
    gate = tmp_path / "gate"
    run_id = tether_json("run", "echo", "--local", "--", "--gate", str(gate), cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    follower = _Follower(run_id, project)
    # It follows the live run: the experiment's first line arrives while the run waits at its gate.
    wait_for(lambda: follower.saw("argv"), 60, "the experiment's first line")
    assert follower.process.poll() is None
    gate.touch()
    code, out, err = follower.end()
    assert code == 0, err
    assert "after the gate" in out and f"Run {run_id} completed (exit code 0)." in err


def test_logs_follow_on_a_server_ends_when_the_run_ends(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = _echo_project(tmp_path / "p")
    with (project / "tether.toml").open("a") as toml:
        toml.write(
            f'[hosts.lab1]\naddress = "{sshd_host.address}"\nidentity_file = "{sshd_host.identity_file}"\n'
            f'remote_root = "{sshd_host.root_dir}"\n'
        )
    assert tether("up", "lab1", cwd=project).returncode == 0
    gate = tmp_path / "gate"  # the test host shares this machine's files
    run_id = tether_json("run", "echo", "--on", "lab1", "--", "--gate", str(gate), cwd=project)["run_id"]
    wait_status(project, run_id, {"running"}, host="lab1")
    follower = _Follower(run_id, project)
    wait_for(lambda: follower.saw("argv"), 60, "the experiment's first line")
    assert follower.process.poll() is None
    gate.touch()
    code, out, err = follower.end()
    assert code == 0, err
    assert "after the gate" in out and f"Run {run_id} completed (exit code 0)." in err
    finished = tether("logs", run_id, "-f", cwd=project, timeout=60)
    assert finished.returncode == 0 and "after the gate" in finished.stdout


# ------------------------------------------------------------------------------------------ 5. the SSH key


def _default_key_project(root: Path, cloud: Cloud) -> Path:
    """A project whose [vast] names no identity_file: tether looks for ~/.ssh/id_*."""
    extra = f"""
[policy]
allow_spending = true

[vast]
remote_root = "{cloud.base}/instance-{{instance_id}}/root"
wait_minutes = 1
ssh_wait_seconds = 3
poll_seconds = 0.2
retries = 2
backoff_seconds = 0.2
"""
    return write_project(root, items=3, extra=extra)


def test_ssh_is_told_the_private_half_of_the_key_found_on_the_account(tmp_path: Path) -> None:
    project = config.Project(tmp_path, config_models.defaults("p"), None)
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text("ssh-ed25519 AAAA user\n")
    # Only the public half here: the private one lives in an ssh-agent, and `-i KEY.pub` makes ssh ask it for it.
    assert rentals.identity_of(project, (pub, "ssh-ed25519 AAAA user")) == str(pub)
    (tmp_path / "id_ed25519").write_text("private\n")
    assert rentals.identity_of(project, (pub, "ssh-ed25519 AAAA user")) == str(tmp_path / "id_ed25519")
    assert rentals.identity_of(project, None) is None
    named = config_models.TetherConfig(
        project=config_models.ProjectConfig(name="p"), vast=config_models.VastConfig(identity_file="~/k")
    )
    assert rentals.identity_of(config.Project(tmp_path, named, None), (pub, "x")) == "~/k"


def test_the_key_checked_on_the_account_is_the_key_ssh_uses(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    # The account's key lives where tether looks ($HOME/.ssh), which is not where ssh would look by itself (ssh
    # reads the home directory of the passwd entry, not $HOME): only `-i KEY -o IdentitiesOnly=yes` reaches it.
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    for name in ("id_ed25519", "id_ed25519.pub"):
        (ssh_dir / name).write_bytes(cloud.key.with_name(name).read_bytes())
    (ssh_dir / "id_ed25519").chmod(0o600)
    cloud.key.unlink()  # only the copy under ~/.ssh remains
    project = _default_key_project(tmp_path / "proj", cloud)
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert result.returncode == 0, result.stderr
    assert len(cloud.emulator.billing_instances()) == 1
    assert tether("destroy", "box", "--discard-unsynced", cwd=project, env=cloud.env).returncode == 0


def test_with_no_key_at_all_up_says_how_to_make_one_and_rents_nothing(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    project = _default_key_project(tmp_path / "proj", cloud)
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert result.returncode == 2, result.stderr
    assert "There is no SSH key" in result.stderr and "nothing was rented" in result.stderr
    assert "ssh-keygen -t ed25519" in result.stderr and "vastai create ssh-key" in result.stderr
    assert cloud.emulator.instances == {}


# ------------------------------------------------------------------------------------------ 10. words


def test_cancel_says_each_fact_once(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=10_000)
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    first = tether("cancel", run_id, cwd=project)
    assert first.returncode == 0, first.stderr
    assert f"Run {run_id} cancelled;" in first.stderr and first.stderr.count("cancelled") == 1
    again = tether("cancel", run_id, cwd=project)
    assert again.returncode == 0, again.stderr
    assert f"Run {run_id} was not cancelled: run is cancelled." in again.stderr and "(now" not in again.stderr


def test_a_run_with_nothing_left_to_do_says_so_on_the_terminal(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=3)
    assert tether("run", "exp", "--local", "--follow", cwd=project).returncode == 0
    # Followed, so the end is known however loaded the machine (a run that ends within the start's grace period
    # says "completed at once" and the same warning without --follow).
    again = tether("run", "exp", "--local", "--follow", cwd=project)
    assert again.returncode == 0, again.stderr
    run_id = again.stdout.strip()
    # Its counts are its own (results belong to their run): it computed nothing; the earlier run made the file.
    assert f"Run {run_id} completed (0/" in again.stderr and "exit code 0)." in again.stderr
    assert f"{run_id}: " in again.stderr and "nothing will run again" in again.stderr


def test_a_rejected_key_says_where_it_came_from(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    from_env = tether("offers", cwd=tmp_path, env={**cloud.env, "VAST_API_KEY": "wrong"})
    assert from_env.returncode == 1 and "rejected the API key" in from_env.stderr
    assert "VAST_API_KEY's" in from_env.stderr and "Set VAST_API_KEY" not in from_env.stderr
    key_file = Path(os.environ["XDG_CONFIG_HOME"]) / "vastai" / "vast_api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("wrong-too\n")
    from_file = tether("offers", cwd=tmp_path, env={"VAST_URL": cloud.env["VAST_URL"]})
    assert from_file.returncode == 1 and f"The key tether used is in {key_file}" in from_file.stderr
    assert "wrong" not in from_file.stderr + from_env.stderr  # the key itself is never shown


def test_down_says_once_and_cost_calls_one_thing_idle(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    project = _default_key_project(tmp_path / "proj", cloud)
    (project / "tether.toml").write_text((project / "tether.toml").read_text() + f'identity_file = "{cloud.key}"\n')
    assert tether("up", "box", "--profile", "api", cwd=project, env=cloud.env).returncode == 0
    down = tether("down", "box", "--no-more-work", cwd=project, env=cloud.env)
    assert down.returncode == 0, down.stderr
    assert down.stderr.count("box: destroy") == 1, down.stderr
    doc = tether_json("cost", "--no-refresh", cwd=project, env=cloud.env)
    # No run ever ran on box: all it cost was idle, and both views say the same amount.
    assert doc["idle_by_server"]["box"] == pytest.approx(doc["by_experiment"]["(idle)"])
    assert doc["idle_by_server"]["box"] == pytest.approx(doc["total_usd"])
    table = tether("cost", "--no-refresh", cwd=project, env=cloud.env)
    assert "of it idle" in table.stdout and "idle (no run live) $" in table.stdout
    assert "idle-billed" not in table.stdout
