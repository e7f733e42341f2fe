"""The server side's error document becomes the matching TetherError on this side (pure)."""

from __future__ import annotations

from tether.cli.agents_cmd import server_error
from tether.errors import AdmissionRefused, ConfigError, NoRoom, RegistryError


def test_each_server_error_becomes_its_class_with_message_hint_and_code() -> None:
    refusal = server_error(
        {
            "type": "NoRoom",
            "message": "Not enough GPU memory for 'b': 16 GB asked, 7.9 GB free; held by a (A5, 16 GB).",
            "hint": "Retry with --wait SECONDS.",
            "exit_code": 4,
            "details": {"asked_gb": 16},
        },
        "gpu-box",
    )
    assert isinstance(refusal, NoRoom) and isinstance(refusal, AdmissionRefused)
    assert refusal.exit_code == 4 and refusal.details == {"asked_gb": 16}
    assert "16 GB asked, 7.9 GB free; held by a (A5, 16 GB)" in refusal.message and refusal.hint
    usage = server_error({"type": "ConfigError", "message": "bad", "hint": None, "exit_code": 2}, "gpu-box")
    assert type(usage) is ConfigError and usage.exit_code == 2 and usage.hint is None
    odd = server_error({"type": "SomethingElse", "message": "odd", "exit_code": 7}, "gpu-box")
    assert type(odd) is RegistryError and odd.exit_code == 7 and odd.message == "odd"
    shapeless = server_error("boom", "gpu-box")
    assert type(shapeless) is RegistryError and "gpu-box" in shapeless.message and shapeless.exit_code == 1
