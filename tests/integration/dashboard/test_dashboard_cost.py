"""What the dashboard's observations ask of real hosts (a real sshd on loopback, named six times): an update
scans every host, as ``tether progress`` does, and reads only its share of the agent registries (each at most every
REGISTRY_S); the whole observation reads none that the updates keep fresh."""

from __future__ import annotations

import math
from pathlib import Path

from tests.helpers import tether, write_project
from tether import config
from tether.context import Ctx
from tether.dashboard.snapshot import REGISTRY_S, Cache, build, refresh
from tether.state import open_state
from tether.testing.sshd import SshdHost

HOSTS = 6
EVERY_S = 10.0  # updates this often read a third of the registries each (REGISTRY_S is 30 s)


def test_registries_are_read_a_few_per_update_and_not_again_by_the_whole_observation(
    tmp_path: Path, sshd_host: SshdHost
) -> None:
    extra = "".join(
        f'\n[hosts.lab{n}]\naddress = "{sshd_host.address}"\nidentity_file = "{sshd_host.identity_file}"\n'
        f'remote_root = "{sshd_host.root_dir}"\n'
        for n in range(HOSTS)
    )
    project_dir = write_project(tmp_path / "proj", items=3, extra=extra)
    assert tether("up", "lab0", cwd=project_dir).returncode == 0  # the server side, shared by the six names
    project = config.load(project_dir / "tether.toml")
    with open_state() as st:
        for n in range(HOSTS):
            st.db.execute(
                "INSERT INTO runs(id, experiment, host, argv, cwd, results_dir, log_path, session, started, status)"
                f" VALUES ('exp-{n}', 'exp', 'lab{n}', '[]', '/w', '/w/results', '/w/log', 's', 1, 'completed')"
            )
        ctx = Ctx(project, st)
        cache = Cache()
        doc = build(ctx, cache)
        assert sorted(cache.listings) == sorted(f"lab{n}" for n in range(HOSTS))  # the first reads them all
        assert sorted(doc["gpus"]) == sorted(cache.listings) and not any(h["error"] for h in doc["hosts"])

        read_at = {name: at for name, (at, _found) in cache.listings.items()}
        build(ctx, cache)  # fresh: the whole observation reads none again
        assert {name: at for name, (at, _found) in cache.listings.items()} == read_at

        for name, (at, found) in list(cache.listings.items()):  # every one due
            cache.listings[name] = (at - REGISTRY_S, found)
        share = math.ceil(HOSTS * EVERY_S / REGISTRY_S)
        seen: set[str] = set()
        for _update in range(math.ceil(HOSTS / share)):
            before = dict(cache.listings)
            doc = refresh(ctx, doc, cache, every_s=EVERY_S)
            again = {name for name in cache.listings if cache.listings[name][0] != before[name][0]}
            assert len(again) == share and not again & seen  # the oldest, a share at a time
            seen |= again
            scanned = [h["host"] for h in doc["hosts"] if h["error"] is None]
            assert len(scanned) == HOSTS and sorted(doc["gpus"]) == sorted(cache.listings)  # every host scanned
        assert seen == set(cache.listings)
        before = dict(cache.listings)
        refresh(ctx, doc, cache, every_s=EVERY_S)
        assert cache.listings.keys() == before.keys()
        assert sum(cache.listings[n][0] != before[n][0] for n in before) <= share  # never more than its share
