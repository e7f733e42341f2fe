"""A toy experiment: square 200 numbers slowly, checkpointing every result with tether's library.

Kill it at any moment (or `tether cancel` it) and run it again: finished items are kept, only what was in flight
is computed again. Extra arguments: `--items N`, `--delay SECONDS`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from tether.checkpoint import run_batch


def square(item: dict[str, Any], delay: float) -> dict[str, Any]:
    time.sleep(delay)  # stands in for an API call or a model forward pass
    return {"id": item["id"], "x": item["x"], "square": item["x"] ** 2}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    items = [{"id": f"item-{i:04d}", "x": i} for i in range(args.items)]
    summary = run_batch(
        lambda it: square(it, args.delay),
        items,
        results_dir=os.environ.get("TETHER_RESULTS_DIR", "results"),
        key=lambda it: it["id"],
        config={"experiment": "squares", "items": args.items},
        concurrency=4,
    )
    print(summary)


if __name__ == "__main__":
    main()
