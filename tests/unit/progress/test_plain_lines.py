"""What a plain log shows of the live display's events (tether.progress.PlainLines), with an injected clock: a line
at each step change, heartbeats no more often than the interval, and the figures known in each heartbeat."""

from __future__ import annotations

from tether.progress import HEARTBEAT_ROWS, HEARTBEAT_S, Board, Count, End, Money, PlainLines, Step


def plain(title: str = "tether up box", started: float = 0.0) -> PlainLines:
    return PlainLines(Board(title, started))


def test_a_step_change_is_one_line_at_once_and_a_repeat_is_none() -> None:
    log = plain()
    assert log.apply(Step("box", "renting offer 7"), 1.0) == ["box: renting offer 7"]
    assert log.apply(Step("box", "renting offer 7"), 2.0) == []  # the same step again says nothing
    assert log.apply(Step("box", "waiting for instance 7 to run: loading"), 3.0) == [
        "box: waiting for instance 7 to run: loading"
    ]
    assert log.apply(Count("box", 1, 5), 3.5) == [] and log.apply(Money(0.01, 0.2), 3.6) == []
    assert log.apply(End("box"), 4.0) == []
    assert log.apply(Step("box", "renting offer 7"), 5.0) == ["box: renting offer 7"]  # a new row says it again


def test_heartbeats_come_while_a_step_lasts_never_sooner_than_the_interval() -> None:
    log = plain()
    log.apply(Step("box", "waiting for instance 7 to run: loading"), 2.0)
    said: list[tuple[float, list[str]]] = []
    now = 2.0
    while now < 62.0:  # a minute of ticks, ten a second
        now = round(now + 0.1, 1)
        if lines := log.tick(now):
            said.append((now, lines))
    times = [t for t, _ in said]
    assert times == [12.0, 22.0, 32.0, 42.0, 52.0, 62.0]  # every HEARTBEAT_S after the step, never sooner
    assert HEARTBEAT_S == 10.0
    assert said[0][1] == ["box: waiting for instance 7 to run: loading, for 0:10"]
    assert said[2][1] == ["box: waiting for instance 7 to run: loading, for 0:30"]


def test_a_step_line_puts_the_next_heartbeat_off() -> None:
    log = plain()
    log.apply(Step("box", "renting offer 7"), 0.0)
    assert log.tick(9.5) == []
    log.apply(Step("box", "setup.sh (SETUP_LOG.txt on the server)"), 9.5)
    assert log.tick(15.0) == [] and log.tick(19.25) == []
    assert log.tick(19.5) == ["box: setup.sh (SETUP_LOG.txt on the server), for 0:10"]
    assert log.tick(20.0) == [] and log.tick(29.25) == []


def test_nothing_at_work_means_no_heartbeat() -> None:
    log = plain()
    assert log.tick(100.0) == []  # no row yet
    log.apply(Step("box", "renting offer 7"), 100.0)
    log.apply(End("box"), 101.0)
    assert log.tick(200.0) == []
    log.apply(Step("next pull", "at 12:30:00", idle=True), 200.0)  # a wait the user asked for: said once
    assert log.tick(300.0) == []


def test_a_heartbeat_has_the_counts_rate_eta_and_money() -> None:
    log = plain("tether run exp --managed")
    for n in (0, 1):
        log.apply(Step(f"shard {n}", f"running on s{n}"), 0.0)
        log.apply(Count(f"shard {n}", 0, 200), 0.0)
    log.apply(Money(0.01, 0.33), 0.0)
    log.apply(Count("shard 0", 20, 200), 10.0)
    log.apply(Count("shard 1", 30, 200), 10.0)
    log.apply(Money(0.04, 0.33), 10.0)
    assert log.tick(10.0) == [
        "tether run exp --managed: for 0:10, 50/400 items, 5 items/s, ETA 2m, $0.0400 spent, $0.3300/hr",
        "shard 0: running on s0, for 0:10, 20/200 items, 2 items/s, ETA 2m",
        "shard 1: running on s1, for 0:10, 30/200 items, 3 items/s, ETA 57s",
    ]


def test_the_sources_rate_and_bytes_show_in_a_heartbeat() -> None:
    log = plain("tether run --follow")
    log.apply(Step("r1", "running on box"), 0.0)
    log.apply(Count("r1", 5, 50, rate_per_s=0.05, eta_s=900.0), 0.0)
    assert log.tick(10.0) == ["r1: running on box, for 0:10, 5/50 items, 3 items/min, ETA 15m"]
    pull = plain("tether pull")
    pull.apply(Count("box", 3, unit="files moved", nbytes=2_500_000), 0.0)  # no step yet: the figures alone
    assert pull.tick(10.0) == ["box: for 0:10, 3 files moved, 2.5 MB"]


def test_a_heartbeat_names_a_bounded_number_of_rows() -> None:
    log = plain("tether run exp --managed")
    for n in range(HEARTBEAT_ROWS + 3):
        log.apply(Step(f"shard {n}", "acquiring"), 0.0)
    lines = log.tick(10.0)
    assert len(lines) == 1 + HEARTBEAT_ROWS + 1
    assert lines[-1] == "tether run exp --managed: and 3 more rows at work"
