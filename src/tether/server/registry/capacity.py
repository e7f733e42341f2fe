"""Capacity and placement: how each GPU's memory is spoken for, where a request goes, and the refusal that says why
it does not fit (pure functions: no files, no processes, no nvidia-smi; stdlib only, Python 3.8+)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tether.errors import NoRoom
from tether.server import gpu as gpu_mod
from tether.server.registry.entries import EPS, Entry, floor_gb, fmt_gb


class Holder(NamedTuple):
    """One entry's hold on one GPU: ``whole`` when it counts as the whole GPU (its gpu_gb being unusable)."""

    id: str
    experiment: str
    gb: float
    whole: bool = False


@dataclass
class GpuUse:
    """How one GPU's memory is spoken for."""

    gpu: gpu_mod.Gpu
    reserved_gb: float = 0.0
    outside_gb: float = 0.0
    holders: list[Holder] = field(default_factory=list)

    @property
    def committed_gb(self) -> float:
        return self.reserved_gb + self.outside_gb

    @property
    def free_gb(self) -> float:
        return max(0.0, self.gpu.total_gb - self.committed_gb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.gpu.index,
            "uuid": self.gpu.uuid,
            "total_gb": round(self.gpu.total_gb, 3),
            "used_gb": round(self.gpu.used_gb, 3),
            "reserved_gb": round(self.reserved_gb, 3),
            "outside_gb": round(self.outside_gb, 3),
            "free_gb": round(self.free_gb, 3),
        }


def compute_use(
    gpus: Sequence[gpu_mod.Gpu],
    running: Sequence[Entry],
    measured_mib: Mapping[tuple[int, int], int] | None = None,
) -> list[GpuUse]:
    """Per GPU: live reservations (max of declared share and measured use) plus unaccounted used memory.

    ``measured_mib`` maps (position in ``running``, GPU index) to MiB that entry's processes hold there. An entry
    whose gpu_gb is unusable (None) holds the whole of each GPU it may be on.
    """
    measured = measured_mib or {}
    uses = []
    for g in gpus:
        use = GpuUse(gpu=g)
        measured_total = 0.0
        unmeasured_declared = 0.0
        for pos, e in enumerate(running):
            placed = e.gpus is None or g.index in e.gpus
            declared = e.share_gb() if placed else 0.0
            whole = declared is None
            share = g.total_gb if declared is None else declared
            meas = measured.get((pos, g.index), 0) / gpu_mod.MIB_PER_GB
            held = max(share, meas)
            if held > 0:
                use.holders.append(Holder(e.id, e.experiment, held, whole))
            use.reserved_gb += held
            measured_total += meas
            if meas == 0:
                unmeasured_declared += share
        use.outside_gb = max(0.0, g.used_gb - measured_total - unmeasured_declared)
        uses.append(use)
    return uses


def place(gpu_gb: float, uses: Sequence[GpuUse]) -> list[int] | None:
    """GPU indices for a request: the fullest single GPU it fits on, else the fewest GPUs with equal shares."""
    fits = [u for u in uses if u.free_gb + EPS >= gpu_gb]
    if fits:
        best = min(fits, key=lambda u: (u.free_gb, u.gpu.index))
        return [best.gpu.index]
    roomiest = sorted(uses, key=lambda u: (-u.free_gb, u.gpu.index))
    for k in range(2, len(uses) + 1):
        chosen = roomiest[:k]
        if all(u.free_gb + EPS >= gpu_gb / k for u in chosen):
            return sorted(u.gpu.index for u in chosen)
    return None


# --------------------------------------------------------------------------------------------------------------
# refusals


def no_gpu(ident: str, gb: float) -> NoRoom:
    """The refusal on a server without nvidia-smi."""
    return NoRoom(
        f"This server has no GPU (no nvidia-smi on PATH), so {ident!r} cannot get {fmt_gb(gb)} GB.",
        "Register with --gpu-gb 0 for API-only work, or run it on a GPU server.",
        {"asked_gb": gb, "free_gb": {}, "holders": [], "queued": [], "reason": "no_gpu"},
    )


def never_fits(ident: str, gb: float, gpus: Sequence[gpu_mod.Gpu]) -> NoRoom | None:
    """The refusal for a request no placement could hold even on empty GPUs, or None if it could fit."""
    if place(gb, [GpuUse(gpu=g) for g in gpus]) is not None:
        return None
    total = sum(g.total_gb for g in gpus)
    return NoRoom(
        f"{ident!r} asks for {fmt_gb(gb)} GB but this server's {len(gpus)} GPU(s) hold "
        f"{fmt_gb(total)} GB in all, so it can never fit.",
        "Lower --gpu-gb or use a bigger GPU server.",
        {"asked_gb": gb, "free_gb": {}, "holders": [], "queued": [], "reason": "never_fits"},
    )


def no_room(ident: str, gb: float, uses: Sequence[GpuUse], ahead: Sequence[Entry]) -> NoRoom:
    """The refusal with its figures: what is free (per GPU), what was asked, who holds the rest, who queues."""
    if len(uses) == 1:
        free_text = f"{fmt_gb(floor_gb(uses[0].free_gb))} GB free"
    else:
        per = ", ".join(f"GPU {u.gpu.index}: {fmt_gb(floor_gb(u.free_gb))}" for u in uses)
        free_text = f"{fmt_gb(floor_gb(sum(u.free_gb for u in uses)))} GB free in all ({per})"
    held: dict[str, tuple[str, float, list[int], bool]] = {}
    for u in uses:
        for h in u.holders:
            prev = held.get(h.id, (h.experiment, 0.0, [], False))
            held[h.id] = (h.experiment, prev[1] + h.gb, [*prev[2], u.gpu.index], prev[3] or h.whole)
    parts = []
    for hid, (exp, gbs, idx, whole) in held.items():
        on = f" on GPU {','.join(str(i) for i in idx)}" if len(uses) > 1 else ""
        why = ": its gpu_gb is unusable, so it counts as the whole GPU" if whole else ""
        parts.append(f"{hid} ({exp or 'no experiment'}, {fmt_gb(gbs)} GB{on}{why})")
    for u in uses:
        if u.outside_gb >= 0.05:
            on = f" on GPU {u.gpu.index}" if len(uses) > 1 else ""
            parts.append(f"{fmt_gb(u.outside_gb)} GB used outside the registry{on}")
    holders_text = ", ".join(parts) if parts else "nobody"
    queue_text = ""
    if ahead:
        queue_text = "; queued ahead: " + ", ".join(f"{e.id} ({fmt_gb(e.gpu_gb)} GB)" for e in ahead)
    details = {
        "asked_gb": gb,
        "free_gb": {str(u.gpu.index): round(u.free_gb, 3) for u in uses},
        "holders": [
            {"id": hid, "experiment": exp, "gpu_gb": round(gbs, 3), "gpus": idx, "whole_gpu": whole}
            for hid, (exp, gbs, idx, whole) in held.items()
        ],
        "outside_gb": {str(u.gpu.index): round(u.outside_gb, 3) for u in uses},
        "queued": [e.id for e in ahead],
        "reason": "queued_ahead" if ahead else "no_room",
    }
    return NoRoom(
        f"Not enough GPU memory for {ident!r}: {fmt_gb(gb)} GB asked, {free_text}; held by {holders_text}{queue_text}.",
        "Retry with --wait SECONDS to queue for room, ask for less, or wait for a holder to finish.",
        details,
    )
