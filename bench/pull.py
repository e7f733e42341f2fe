"""Pulling 10,000 small result files from an SSH host: tether's pull against ``scp -r``, then an unchanged re-pull.

One real sshd on loopback (``tether.testing.sshd.SshdHost``) holds ``proj/results/`` with 10,000 files of
200-2,000 bytes of random text (fixed seed) in 10 x 20 nested folders.

- tether: ``SSHTransport.pull(remote_dir, local_dir)``, the transport-level pull ``tether pull`` uses (rsync with
  delayed updates and a partial dir, over tether's ssh options).
- baseline: ``scp -r`` with the same ssh options (identity, known_hosts, port, the same ControlMaster socket);
  OpenSSH's scp speaks SFTP by default.

Both sides run on a warm shared connection and pull into an empty folder; repetitions alternate between the two
and the medians are compared: ``time_ratio`` = scp time / tether time (above 1: tether is faster). Every copy is
checked against the source tree (same names, same bytes).

Then a second pull of the unchanged tree. ``repull_bytes`` is what ``tether pull`` (``tether.pull.pull``: the
server's manifest digest, then rsync and a sha256 check only if something changed) moves on the wire when nothing
changed, counted on TCP through a counting proxy (``tether.testing.proxy.CutProxy``) on a connection of its own:
encrypted bytes in both directions, ssh framing included, the handshake not counted. ``total_bytes`` is the sum of
the file sizes; ``repull_fraction`` = repull_bytes / total_bytes (goal: below 0.01).

For comparison, the transport-level rsync re-pull alone (what tether would move without the manifest digest):
``rsync_repull_bytes`` from rsync's ``--stats`` ("Total bytes sent" + "received": the file list and protocol
overhead), ``rsync_repull_literal_bytes`` (file data, rsync's "Literal data") and ``rsync_repull_tcp_bytes``.

Run: python bench/pull.py   (last line: JSON figures)
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, note, timed
from _sshd import BenchHost, bench_host, run_timed
from tether.config import ExperimentConfig, Project, ProjectConfig, TetherConfig
from tether.context import Ctx
from tether.provision import install_server_side
from tether.pull import pull as tether_full_pull
from tether.state import open_state
from tether.testing.proxy import CutProxy
from tether.transport.base import Completed, SyncStats, run_process
from tether.transport.ssh import SSHTransport, parse_address, ssh_base_options

EXPERIMENTS = 10
SHARDS = 20
FILES_PER_SHARD = 50
N_FILES = EXPERIMENTS * SHARDS * FILES_PER_SHARD
MIN_BYTES, MAX_BYTES = 200, 2000
REPEATS = 3
SEED = 20250101


def fabricate_results(results: Path) -> int:
    """Write the 10,000 files; returns their total size in bytes."""
    rng = random.Random(SEED)
    alphabet = (string.ascii_letters + string.digits + " \n").encode()
    total = 0
    for e in range(EXPERIMENTS):
        for s in range(SHARDS):
            folder = results / f"exp{e:02d}" / f"shard{s:02d}"
            folder.mkdir(parents=True)
            for i in range(FILES_PER_SHARD):
                size = rng.randint(MIN_BYTES, MAX_BYTES)
                data = bytes(rng.choices(alphabet, k=size))
                (folder / f"item{i:04d}.json").write_bytes(data)
                total += size
    return total


def tree_digest(folder: Path) -> tuple[int, str]:
    """(number of files, one sha256 over every relative path and its content) of a folder tree."""
    digest = hashlib.sha256()
    count = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
            count += 1
    return count, digest.hexdigest()


def scp_options(b: BenchHost) -> list[str]:
    """tether's ssh options for this host, spelled for scp (whose port flag is -P, not -p)."""
    opts = ssh_base_options(b.transport.target)
    return ["-P" if opt == "-p" else opt for opt in opts]


def scp_argv(b: BenchHost, remote_dir: str, local_dir: Path) -> list[str]:
    target = b.transport.target
    return ["scp", "-q", "-r", *scp_options(b), f"{target.destination}:{remote_dir}", str(local_dir)]


class RsyncOutput:
    """A transport runner that keeps the last rsync's stdout (for the wire byte counts of ``--stats``)."""

    def __init__(self) -> None:
        self.last = b""

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        result = run_process(argv, **kwargs)
        if argv and argv[0] == "rsync":
            self.last = result.stdout
        return result

    def wire_bytes(self) -> tuple[int, int]:
        """(bytes sent, bytes received) by the local rsync in its last run."""
        text = self.last.decode(errors="replace")

        def field(label: str) -> int:
            match = re.search(rf"^{label}:\s*([\d,]+)", text, re.MULTILINE)
            if match is None:
                raise RuntimeError(f"rsync --stats printed no {label!r}: {text[-300:]}")
            return int(match.group(1).replace(",", ""))

        return field("Total bytes sent"), field("Total bytes received")


def main() -> int:
    t_start = time.perf_counter()
    with bench_host("tether-bench-pull-") as b:
        recorder = RsyncOutput()
        b.transport.runner = recorder
        remote_results = b.root / "proj" / "results"
        total_bytes = fabricate_results(remote_results)
        source = tree_digest(remote_results)
        assert source[0] == N_FILES
        note(f"host {b.host.address}: {N_FILES} files, {total_bytes} bytes under {remote_results}")
        local = b.tmp / "local"
        local.mkdir()

        tether_times: list[float] = []
        scp_times: list[float] = []
        first: SyncStats | None = None
        first_wire = (0, 0)
        for rep in range(REPEATS):
            dest = local / f"tether{rep}"
            elapsed, stats = timed(partial(b.transport.pull, str(remote_results), dest))
            tether_times.append(elapsed)
            if first is None:
                first, first_wire = stats, recorder.wire_bytes()
            assert tree_digest(dest) == source, "tether's copy differs from the source"
            scp_dest = local / f"scp{rep}"
            elapsed, _ = run_timed(scp_argv(b, str(remote_results), scp_dest))
            scp_times.append(elapsed)
            assert tree_digest(scp_dest) == source, "scp's copy differs from the source"
            note(f"repetition {rep + 1}/{REPEATS}: tether {tether_times[-1]:.2f} s, scp -r {elapsed:.2f} s")
        assert first is not None

        # The unchanged re-pull, into the last copy tether made.
        dest = local / f"tether{REPEATS - 1}"
        repull_s, again = timed(lambda: b.transport.pull(str(remote_results), dest))
        sent, received = recorder.wire_bytes()
        assert tree_digest(dest) == source

        # End to end: tether.pull.pull (manifest, rsync, verification) into a fresh project folder.
        install_server_side(b.target)
        project_dir = local / "project"
        project_dir.mkdir()
        config = TetherConfig(
            project=ProjectConfig(name="proj"),
            experiments={"bench": ExperimentConfig(command=["true"], results="results")},
        )
        project = Project(project_dir, config, project_dir / "tether.toml")
        with open_state() as state:
            full_s, full = timed(lambda: tether_full_pull(Ctx(project, state), b.target))
            full_again_s, full_again = timed(lambda: tether_full_pull(Ctx(project, state), b.target))
            assert full.verified and full_again.verified and full.total_bytes == total_bytes
            assert full_again.bytes_transferred == 0

            # The same unchanged re-pulls once more through a counting TCP proxy: encrypted bytes on the wire.
            with CutProxy(b.host.port) as proxy:
                address = f"{b.host.user}@{b.host.host}:{proxy.port}"
                via = SSHTransport(
                    parse_address(address, identity_file=b.host.identity_file, label="bench-via-proxy"),
                    runner=recorder,
                )
                try:
                    via.run(["true"])  # handshake and control master, not counted
                    mark = proxy.bytes_forwarded
                    via.pull(str(remote_results), dest)
                    repull_tcp = proxy.bytes_forwarded - mark
                    via_target = replace(b.target, transport=via)
                    mark = proxy.bytes_forwarded
                    assert tether_full_pull(Ctx(project, state), via_target).verified
                    full_repull_tcp = proxy.bytes_forwarded - mark
                finally:
                    via.close()

    tether_s, scp_s = median(tether_times), median(scp_times)
    rsync_repull = sent + received
    figures: dict[str, Any] = {
        "bench": "pull",
        "files": N_FILES,
        "total_bytes": total_bytes,
        "repeats": REPEATS,
        "tether_s": round(tether_s, 3),
        "scp_s": round(scp_s, 3),
        "time_ratio": round(scp_s / tether_s, 2),
        "first_pull_literal_bytes": first.bytes_transferred,
        "first_pull_wire_bytes": sum(first_wire),
        "full_pull_s": round(full_s, 3),
        "repull_s": round(full_again_s, 3),
        "repull_bytes": full_repull_tcp,
        "repull_fraction": round(full_repull_tcp / total_bytes, 5),
        "goal_repull_fraction": 0.01,
        "rsync_repull_s": round(repull_s, 3),
        "rsync_repull_bytes": rsync_repull,
        "rsync_repull_literal_bytes": again.bytes_transferred,
        "rsync_repull_files": again.files_transferred,
        "rsync_repull_fraction": round(rsync_repull / total_bytes, 5),
        "rsync_repull_tcp_bytes": repull_tcp,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(f"pull of {N_FILES} files ({total_bytes} bytes) from one SSH host (warm ControlMaster, medians)")
    print(f"  first pull, tether (rsync): {tether_s:7.2f} s")
    print(f"  first pull, scp -r:         {scp_s:7.2f} s   time_ratio scp/tether = {figures['time_ratio']}")
    print(
        f"  tether pull end to end (manifest + rsync + sha256 check): {full_s:.2f} s; unchanged re-pull "
        f"{full_again_s:.2f} s, {full_repull_tcp} bytes on TCP: repull_fraction {figures['repull_fraction']} "
        "(goal < 0.01)"
    )
    print(
        f"  rsync alone, unchanged: {repull_s:.2f} s, {rsync_repull} bytes ({sent} sent + {received} received), "
        f"{again.bytes_transferred} bytes of file data; {repull_tcp} bytes on TCP"
    )
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
