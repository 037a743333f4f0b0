"""Costs of privacy and tamper evidence, each against a baseline run in the same process.

    .venv/bin/python benchmarks/bench_privacy.py [--events 200000] [--big /work/bench/lake-10m]

Part 1 builds two sample lakes of the same events in a temporary folder, one with the users' personal
fields declared (encrypted) and one without, and compares bulk import, full reads, point reads and
single appends. It then times forget (with its scan of every file) and verify. Part 2 runs read-only on
the big lake if it exists: verify without moving the checkpoint, and the forget scan, against reading the
same files once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from es_analytics import Event, Lake  # noqa: E402
from es_analytics.examples import users  # noqa: E402,F401  declares the personal fields
from es_analytics.forgetting import scan_files  # noqa: E402
from es_analytics.privacy import declare_personal, undeclare_personal  # noqa: E402
from es_analytics.sample import generate  # noqa: E402

ROWS: list[tuple[str, str, str, float]] = []


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def row(what: str, ours: float, baseline: float, base_name: str) -> None:
    ROWS.append((what, f"{ours * 1000:,.1f} ms", f"{baseline * 1000:,.1f} ms ({base_name})", ours / baseline))


def plain(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the users' personal fields undeclared (the baseline: nothing encrypted)."""
    for version in (1, 2, None):
        undeclare_personal("UserRegistered", version)
    try:
        return fn()
    finally:
        for version in (1, 2):
            declare_personal("UserRegistered", ["email", "name"], subject="id", schema_version=version)
        declare_personal("UserRegistered", ["profile.email", "profile.name"], subject="userId")


def part_one(events: int, folder: Path) -> None:
    enc, clear = Lake.open(folder / "encrypted"), Lake.open(folder / "clear")
    t_enc, info = timed(lambda: generate(enc, events=events))
    t_clear, _ = timed(lambda: plain(lambda: generate(clear, events=events)))
    row(f"bulk import of {info['events']:,} sample events ({info['users']:,} users)", t_enc, t_clear, "no encryption")
    t_enc, frame = timed(lambda: enc.events(), repeat=3)
    t_clear, _ = timed(lambda: clear.events(), repeat=3)
    row(f"lake.events() of all {frame.height:,} (decrypts every user)", t_enc, t_clear, "plaintext lake")
    t_enc, _ = timed(lambda: enc.events(types="UserRegistered"), repeat=3)
    t_clear, _ = timed(lambda: clear.events(types="UserRegistered"), repeat=3)
    row("lake.events(types='UserRegistered')", t_enc, t_clear, "plaintext lake")
    t_enc, _ = timed(lambda: enc.events("user-0000007"), repeat=50)
    t_clear, _ = timed(lambda: clear.events("user-0000007"), repeat=50)
    row("lake.events('user-0000007') point read", t_enc, t_clear, "plaintext lake")

    def register(lake: Lake, prefix: str) -> None:
        for i in range(200):
            data = {"userId": f"{prefix}{i}", "profile": {"email": f"n{i}@example.org", "name": f"N {i}"},
                    "preferences": {"newsletter": False}}
            lake.append(f"{prefix}{i}", [Event("UserRegistered", data, schema_version=3)], expected_version=0,
                        aggregate_type="User")

    t_enc, _ = timed(lambda: register(enc, "new-"))
    t_clear, _ = timed(lambda: plain(lambda: register(clear, "new-")))
    row("200 single appends of a new user (new key each)", t_enc, t_clear, "no encryption")
    t_verify, result = timed(lambda: enc.verify())
    t_read, _ = timed(lambda: enc.sql("SELECT sum(length(data)) + sum(length(metadata)) AS n FROM events"))
    row(f"first verify ({result['checked_events']:,} events, checkpoint written)", t_verify, t_read,
        "reading data+metadata once")
    t_verify, _ = timed(lambda: enc.verify(checkpoint=False), repeat=3)
    row("verify against the checkpoint", t_verify, t_read, "reading data+metadata once")
    t_forget, cert = timed(lambda: enc.forget("user-0000011"))
    t_files, _ = timed(lambda: [p.read_bytes() for p in enc.path.rglob("*") if p.is_file()])
    row(f"forget one subject (scan of {cert['scan']['files_scanned']} files, "
        f"{cert['scan']['bytes_scanned'] / 1e6:.1f} MB, verified={cert['verified']})", t_forget, t_files,
        "reading every file once")
    enc.close()
    clear.close()


def part_two(big: Path) -> None:
    if not (big / "manifest.json").exists():
        print(f"(no big lake at {big}; part 2 skipped)")
        return
    with Lake.open(big) as lake:
        t_verify, result = timed(lambda: lake.verify(checkpoint=False))
        t_read, _ = timed(lambda: lake.sql("SELECT sum(length(data)) + sum(length(metadata)) AS n FROM events"))
        row(f"verify, {result['checked_events']:,} events (read-only)", t_verify, t_read, "reading data+metadata once")
        needles = [("value 1", b"nobody.q9z@example.org"), ("value 2", b"Nobody Q9z")]
        t_scan, scan = timed(lambda: scan_files(big, needles))
        t_files, _ = timed(lambda: [len(p.read_bytes()) for p in big.rglob("*") if p.is_file()])
        row(f"forget's scan: {scan['files_scanned']} files, {scan['bytes_scanned'] / 1e9:.2f} GB, 2 values",
            t_scan, t_files, "reading every file once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--big", type=Path, default=Path("/work/bench/lake-10m"))
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        part_one(args.events, Path(tmp))
    if not args.skip_big:
        part_two(args.big)
    width = max(len(r[0]) for r in ROWS)
    print(f"{'operation':<{width}}  {'es_analytics':>14}  {'baseline':>44}  ratio")
    for what, ours, base, ratio in ROWS:
        print(f"{what:<{width}}  {ours:>14}  {base:>44}  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
