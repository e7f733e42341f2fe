"""A profile's host filters join its query (Vast.ai's own language), and the preflight's expectations come from the
offer and the profile."""

from __future__ import annotations

from tether import preflight
from tether.config_models import ProfileConfig
from tether.profiles import profile_from_config


def test_filters_join_the_runbook_query() -> None:
    plain = profile_from_config("inference", None)
    assert plain.offer_query().text == "gpu_ram>=24 reliability>0.95 num_gpus=1"
    tight = profile_from_config(
        "inference", ProfileConfig(min_inet_down=200, direct_ssh=True, verified=False, min_cuda=12.1)
    )
    assert tight.offer_query().text == (
        "gpu_ram>=24 reliability>0.95 num_gpus=1 inet_down>=200 direct_port_count>=1 verified=false"
    )
    assert tight.offer_query(query="num_gpus=2").text == "num_gpus=2"  # --query replaces it all, as before


def test_what_a_rental_must_show() -> None:
    prof = profile_from_config("inference", ProfileConfig(preflight_command="nvidia-smi"))
    meta = {"num_gpus": 1, "gpu_name": "RTX 4090", "gpu_ram_gb": 24.564, "cuda_max_good": 12.4}
    expect = preflight.expect_for(prof, meta)
    assert (expect.num_gpus, expect.gpu_name, expect.min_cuda) == (1, "RTX 4090", 12.4)
    assert expect.min_disk_free_gb == prof.min_disk_gb / 2 and expect.command == "nvidia-smi"
    stricter = profile_from_config("inference", ProfileConfig(min_cuda=12.6, min_disk_free_gb=50))
    assert preflight.expect_for(stricter, meta).min_cuda == 12.6
    assert preflight.expect_for(stricter, meta).min_disk_free_gb == 50
    report = {"gpus": [{"name": "NVIDIA GeForce RTX 4090", "memory_mib": 24564}], "cuda": "12.4", "disk_free_gb": 55}
    assert preflight.problems(report, preflight.expect_for(stricter, meta)) == [
        "its driver supports CUDA 12.4, the profile needs 12.6 (min_cuda)"
    ]
