"""nvidia-smi queries: exact argv, the driver's real output formats, and failures named clearly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tether.errors import RegistryError
from tether.server import gpu
from tether.server.gpu import Gpu
from tether.server.registry import Entry, GpuUse, compute_use, place


def test_argv_is_exact() -> None:
    assert gpu.gpu_query_argv("/usr/bin/nvidia-smi") == [
        "/usr/bin/nvidia-smi",
        "--query-gpu=index,uuid,memory.total,memory.used",
        "--format=csv,noheader,nounits",
    ]
    assert gpu.apps_query_argv("nvidia-smi") == [
        "nvidia-smi",
        "--query-compute-apps=gpu_uuid,pid,used_memory",
        "--format=csv,noheader,nounits",
    ]


def test_parses_real_formats() -> None:
    out = "0, GPU-5f1e3b9a-2c4d-4e7f-9a1b-3c4d5e6f7a8b, 24564, 1\n"
    (g,) = gpu.parse_gpus(out)
    assert (g.index, g.total_mib, g.used_mib) == (0, 24564, 1)
    assert round(g.total_gb, 2) == 23.99
    two = "1, GPU-b, 49140, 5\n0, GPU-a, 49140, [N/A]\n"
    assert [(x.index, x.uuid, x.used_mib) for x in gpu.parse_gpus(two)] == [(0, "GPU-a", 0), (1, "GPU-b", 5)]
    rows = gpu.parse_compute_apps("GPU-a, 4242, 20480\nGPU-a, 99, [N/A]\n")
    assert rows == [("GPU-a", 4242, 20480), ("GPU-a", 99, 0)]
    assert gpu.parse_compute_apps("") == []


@pytest.mark.parametrize(
    "text",
    [
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "0, GPU-a, lots, 1",
        "0, GPU-a, 24564",
        "x, GPU-a, 24564, 1",
        "0, GPU-a, -5, 1",
    ],
)
def test_unexpected_output_is_named(text: str) -> None:
    with pytest.raises(RegistryError) as err:
        gpu.parse_gpus(text)
    assert "unexpected" in err.value.message
    assert text[:40] in err.value.message


def test_empty_gpu_list_is_an_error() -> None:
    with pytest.raises(RegistryError, match="no GPU"):
        gpu.parse_gpus("\n")


def test_fake_on_path_gives_each_shape(gpus: Callable[[str], None]) -> None:
    for mode, count, total in (("1x24", 1, 24564), ("2x48", 2, 49140), ("8x80", 8, 81920)):
        gpus(mode)
        found = gpu.query_gpus()
        assert found is not None
        assert len(found) == count
        assert {g.total_mib for g in found} == {total}
        assert len({g.uuid for g in found}) == count


def test_failing_nvidia_smi_says_so(gpus: Callable[[str], None]) -> None:
    gpus("fail")
    with pytest.raises(RegistryError) as err:
        gpu.query_gpus()
    assert "exit code 9" in err.value.message
    assert "Driver/library version mismatch" in err.value.message


def test_hung_nvidia_smi_times_out(gpus: Callable[[str], None]) -> None:
    gpus("hang")
    with pytest.raises(RegistryError, match=r"did not answer within 0\.5 s"):
        gpu.query_gpus(timeout=0.5)


def test_no_nvidia_smi_means_cpu_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.find_nvidia_smi() is None
    assert gpu.query_gpus() is None


def _gpu(index: int, total_gb: float, used_gb: float = 0.0) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index}", total_mib=int(total_gb * 1024), used_mib=int(used_gb * 1024))


def _entry(ident: str, gb: float, gpus: list[int] | None) -> Entry:
    return Entry(id=ident, experiment="e", gpu_gb=gb, status="running", started=None, gpus=gpus)


def test_used_memory_is_a_floor_without_per_process_figures() -> None:
    a = _entry("a", 10, [0])
    # the job has not allocated yet: its 10 GB reservation counts
    (use,) = compute_use([_gpu(0, 24, used_gb=2)], [a])
    assert use.committed_gb == pytest.approx(10)
    # something outside the registry uses 15 GB: the floor wins
    (use,) = compute_use([_gpu(0, 24, used_gb=15)], [a])
    assert use.committed_gb == pytest.approx(15)
    assert use.outside_gb == pytest.approx(5)


def test_measured_use_above_declaration_counts() -> None:
    a = _entry("a", 4, [0])
    (use,) = compute_use([_gpu(0, 24, used_gb=12)], [a], {(0, 0): 9 * 1024})
    assert use.reserved_gb == pytest.approx(9)
    assert use.outside_gb == pytest.approx(3)  # 12 used - 9 measured for a
    assert use.free_gb == pytest.approx(12)


def test_placement_best_fit_then_spread() -> None:
    uses = [GpuUse(gpu=_gpu(0, 48), reserved_gb=30), GpuUse(gpu=_gpu(1, 48), reserved_gb=10)]
    assert place(15, uses) == [0]  # fullest GPU that fits keeps GPU 1 free for a larger job
    assert place(30, uses) == [1]
    assert place(50, uses) is None  # 18 + 38 free, but halves of 25 do not fit on GPU 0
    assert place(40, uses) is None
    even = [GpuUse(gpu=_gpu(0, 48), reserved_gb=20), GpuUse(gpu=_gpu(1, 48), reserved_gb=20)]
    assert place(40, even) == [0, 1]  # 20 GB on each
    eight = [GpuUse(gpu=_gpu(i, 80)) for i in range(8)]
    assert place(300, eight) == [0, 1, 2, 3]
