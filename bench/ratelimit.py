"""Rate limits: tether's batch runner against the naive setting, both with the real ``openai.AsyncOpenAI`` client.

A real HTTP server on loopback (``tether.testing.llm_server``, in a process of its own) speaks the OpenAI
chat-completions API with a token bucket of R requests/s and a tokens-per-minute budget, answering 429 with
``retry-after``/``retry-after-ms`` beyond them, plus 2 % 500s; an admitted call takes 0.3 s plus 4 ms per
completion token (about 0.5 s), so about 25 calls in flight fill R = 50/s. 3,000 items (prompts of 200-2,000
characters) go through ``run_batch`` with concurrency 64, twice in the same run:

- naive: fixed concurrency 64 (``adaptive=False``), the SDK's own retries on (``max_retries=2``, its default),
  tether's 3 retries on top;
- tether: the defaults (adaptive concurrency, ``tpm=`` the server's budget with a prompt-length cost), the client
  built with ``without_sdk_retries``.

Figures per side: ``fraction_of_capacity`` (items completed per second / R), ``rejected_share`` (429s / requests
the server saw), ``failed_items``; plus requests, elapsed seconds and the concurrency the adaptive limit ended at.
Goal for tether: fraction_of_capacity >= 0.9, rejected_share <= 0.05, failed_items == 0.

Run: python bench/ratelimit.py [--items N] [--rps R]   (last line: JSON figures; about two and a half minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai

from _common import emit, note
from tether.checkpoint import CheckpointWarning, arun_batch, without_sdk_retries

ITEMS = 3000
RPS = 50.0
CONCURRENCY = 64
COMPLETION_TOKENS = 50
LATENCY_S = 0.3
PER_TOKEN_S = 0.004
ERROR_RATE = 0.02


def make_items(n: int) -> list[dict[str, Any]]:
    rng = random.Random(13)
    return [{"id": f"q{i:05d}", "prompt": "word " * (rng.randint(200, 2000) // 5)} for i in range(n)]


def cost(item: dict[str, Any]) -> float:
    return len(item["prompt"]) / 4 + COMPLETION_TOKENS


def tpm_budget(rps: float) -> float:
    """The server's tokens per minute: 20 % above what R requests/s of the average item need."""
    average = (200 + 2000) / 2 / 4 + COMPLETION_TOKENS
    return rps * average * 60 * 1.2


def control(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    base = url.rsplit("/v1", 1)[0]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


async def one_side(url: str, items: list[dict[str, Any]], rps: float, naive: bool) -> dict[str, Any]:
    control(
        url,
        "/reset",
        {
            "rps": rps,
            "tpm": tpm_budget(rps),
            "error_rate": ERROR_RATE,
            "latency_s": LATENCY_S,
            "per_token_s": PER_TOKEN_S,
            "seed": 5,
        },
    )
    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=2, timeout=60)
    if not naive:
        client = without_sdk_retries(client)

    async def ask(item: dict[str, Any]) -> dict[str, Any]:
        resp = await client.chat.completions.create(
            model="bench-model",
            messages=[{"role": "user", "content": item["prompt"]}],
            max_tokens=COMPLETION_TOKENS,
        )
        return {"answer": resp.choices[0].message.content, "tokens": resp.usage.total_tokens if resp.usage else None}

    with tempfile.TemporaryDirectory() as tmp:
        options: dict[str, Any] = {"key": lambda it: it["id"], "concurrency": CONCURRENCY, "progress": False}
        if naive:
            options["adaptive"] = False
        else:
            options.update(tpm=tpm_budget(rps), cost=cost)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)  # the naive side is warned about stacked retries
            summary = await arun_batch(ask, items, Path(tmp) / "results", **options)
    await client.close()
    stats = control(url, "/stats")
    requests = int(stats["requests"])
    rejected = int(stats["by_status"].get("429", 0))
    figures = {
        "fraction_of_capacity": round(summary.completed / summary.elapsed / rps, 3),
        "rejected_share": round(rejected / max(requests, 1), 3),
        "failed_items": summary.failed,
        "requests": requests,
        "server_500s": int(stats["by_status"].get("500", 0)),
        "elapsed_s": round(summary.elapsed, 1),
        "final_concurrency": summary.concurrency,
    }
    note(f"{'naive' if naive else 'tether'}: {figures}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--rps", type=float, default=RPS)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "tether.testing.llm_server"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        items = make_items(args.items)
        note(f"{args.items} items, R = {args.rps:g} requests/s, TPM {tpm_budget(args.rps):,.0f}, concurrency 64")
        naive = asyncio.run(one_side(url, items, args.rps, naive=True))
        tether = asyncio.run(one_side(url, items, args.rps, naive=False))
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    out: dict[str, Any] = {"items": args.items, "rps": args.rps, "concurrency": CONCURRENCY}
    for side, figures in (("naive", naive), ("tether", tether)):
        for k, v in figures.items():
            out[f"{side}_{k}"] = v
    out["goal_met"] = (
        tether["fraction_of_capacity"] >= 0.9 and tether["rejected_share"] <= 0.05 and tether["failed_items"] == 0
    )
    emit(out)


if __name__ == "__main__":
    main()
