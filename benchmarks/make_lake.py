"""Make (once) the benchmark lake: ``python benchmarks/make_lake.py [--events N] [--path DIR]``.

Benchmarks share one lake per size; the default is the 10-million-event lake at /work/bench/lake-10m
(override with ES_ANALYTICS_BENCH_LAKE). Re-running with an existing lake prints its size and does nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from es_analytics import Lake
from es_analytics.sample import generate

DEFAULT = Path(os.environ.get("ES_ANALYTICS_BENCH_LAKE", "/work/bench/lake-10m"))


def ensure_lake(path: Path = DEFAULT, events: int = 10_000_000) -> Path:
    """Return ``path`` after making sure it holds a generated sample lake."""
    if (path / "lake.json").exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    started = time.perf_counter()
    with Lake.open(tmp, auto_seal_rows=0) as lake:
        result = generate(lake, events=events, progress=sys.stderr.isatty())
    os.replace(tmp, path)
    print(f"made {path}: {result['events']:,} events in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--path", type=Path, default=DEFAULT)
    args = parser.parse_args()
    path = ensure_lake(args.path, args.events)
    with Lake.open(path) as lake:
        n = lake.sql("SELECT count(*) AS n FROM events")["n"].item()
        size = sum(f.stat().st_size for f in (path / "events").rglob("*.parquet"))
    print(f"{path}: {n:,} events, {size / n:.1f} bytes/event sealed")


if __name__ == "__main__":
    main()
