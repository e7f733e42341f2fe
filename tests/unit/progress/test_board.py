"""The live display's board (tether.progress): what a frame says, from the events alone and an injected clock."""

from __future__ import annotations

from tether.fmt import elapsed, size
from tether.progress import Board, Count, End, Money, Step, eta, rate


def test_rate_is_items_over_the_samples_and_unknown_before_two() -> None:
    assert rate([]) is None
    assert rate([(10.0, 5)]) is None
    assert rate([(10.0, 5), (10.0, 9)]) is None  # no time between them
    assert rate([(10.0, 5), (12.0, 9), (14.0, 25)]) == 5.0
    assert rate([(0.0, 9), (1.0, 5)]) == 0.0  # never negative


def test_eta_is_what_is_left_at_the_rate() -> None:
    assert eta(40, 100, 2.0) == 30.0
    assert eta(100, 100, None) == 0.0
    assert eta(120, 100, 1.0) == 0.0
    assert eta(40, None, 2.0) is None
    assert eta(40, 100, None) is None
    assert eta(40, 100, 0.0) is None


def test_a_step_keeps_its_clock_until_it_changes() -> None:
    board = Board("tether up box", started=100.0)
    board.apply(Step("box", "waiting for instance 7 to run: loading"), 100.0)
    board.apply(Step("box", "waiting for instance 7 to run: loading"), 130.0)  # the same step again
    assert board.lines(142.0)[1] == "  box  waiting for instance 7 to run: loading  0:42"
    board.apply(Step("box", "setup.sh (SETUP_LOG.txt on the server)"), 150.0)
    assert board.lines(155.0)[1] == "  box  setup.sh (SETUP_LOG.txt on the server)  0:05"
    assert board.lines(155.0)[0].endswith("tether up box · 0:55")


def test_counts_give_rate_and_eta_when_the_source_does_not() -> None:
    board = Board("run", started=0.0)
    board.apply(Step("shard 0", "running on s0"), 0.0)
    board.apply(Count("shard 0", 10, 100), 0.0)
    board.apply(Count("shard 0", 30, 100), 10.0)
    line = board.lines(10.0)[1]
    assert "30/100 items" in line and "2 items/s" in line and "ETA 35s" in line


def test_the_sources_own_rate_and_eta_win() -> None:
    board = Board("run", started=0.0)
    board.apply(Count("r", 5, 50, rate_per_s=0.05, eta_s=900.0), 0.0)
    line = board.lines(1.0)[1]
    assert "3 items/min" in line and "ETA 15m" in line


def test_a_count_that_goes_down_starts_its_rate_again() -> None:
    board = Board("run", started=0.0)
    board.apply(Count("shard 1", 0, 100), 0.0)
    board.apply(Count("shard 1", 50, 100), 10.0)
    board.apply(Count("shard 1", 20, 100), 20.0)  # restarted elsewhere, counted from its synced journal
    assert board.rows["shard 1"].rate() is None
    board.apply(Count("shard 1", 30, 100), 30.0)
    assert board.rows["shard 1"].rate() == 1.0


def test_old_samples_leave_the_rate_window() -> None:
    board = Board("run", started=0.0)
    for t in range(0, 200, 10):
        done = t if t < 100 else 100 + (t - 100) * 5  # faster after t=100
        board.apply(Count("s", done, 10_000), float(t))
    assert board.rows["s"].rate() == 5.0


def test_the_header_has_money_and_the_runs_eta_is_its_slowest_shard() -> None:
    board = Board("tether run exp --managed", started=0.0)
    board.apply(Money(0.0123, 0.34), 5.0)
    board.apply(Count("shard 0", 0, 100, rate_per_s=1.0), 5.0)
    board.apply(Count("shard 1", 0, 60, rate_per_s=0.1), 5.0)
    header = board.lines(65.0)[0]
    assert "spent $0.0123" in header and "burn $0.3400/hr" in header
    assert "0/160 items" in header and "ETA 10m" in header
    board.apply(Count("shard 2", 0, None), 6.0)  # one whose total is unknown: the run's ETA is too
    assert "ETA -" in board.lines(66.0)[0]


def test_a_finished_row_leaves_the_display() -> None:
    board = Board("tether pull", started=0.0)
    board.apply(Step("box", "copying results (3 files, 12 kB on the server)"), 0.0)
    board.apply(Count("box", 3, unit="files moved", nbytes=12_000), 1.0)
    assert board.lines(2.0)[1] == "  box  copying results (3 files, 12 kB on the server)  3 files moved  12 kB  0:02"
    board.apply(End("box"), 2.0)
    board.apply(End("never there"), 2.0)
    assert board.lines(3.0)[1:] == []


def test_clock_and_size_formats() -> None:
    assert [elapsed(s) for s in (0, 7.9, 754, 3723)] == ["0:00", "0:07", "12:34", "1:02:03"]
    assert [size(n) for n in (812, 3400, 12_000_000, 1_250_000_000, 999_600)] == [
        "812 B",
        "3.4 kB",
        "12 MB",
        "1.25 GB",
        "1 MB",
    ]


def test_a_count_of_one_is_singular() -> None:
    from tether.fmt import count

    assert [count(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert count(1, "entry", "entries") == "1 entry" and count(3, "entry", "entries") == "3 entries"
