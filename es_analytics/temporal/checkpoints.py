"""Columnar state checkpoints: ``states`` at any time reads one checkpoint plus the events after it.

For one aggregate type and one reducer declaration, a checkpoint set (``<lake>/cache/temporal/<type>/
<fingerprint>/``) holds:

- **inputs**: every event of the type up to position ``P`` with its reducer values already extracted from
  the JSON payload (narrow files sorted by ``occurred_at``, so a time range reads few row groups; one file
  per refresh, each covering a range of positions);
- **checkpoints**: at each boundary ``B`` (month starts by default), the *partial* reduced state of every
  aggregate over the events with ``occurred_at < B`` and ``position <= C`` (``C <= P``).

``states(as_of=T, known_at=K)`` is ``merge(checkpoint[B], inputs up to C with B <= occurred_at <= T,
inputs after C with occurred_at <= T, events after P)`` where ``B`` is the last boundary at or before
``T``. Reducers are mergeable (sums add, "last" keeps the value with the highest version), so the result
is exactly the full scan's. Nothing is ever invalidated: a back-dated event recorded after ``C`` is read
from the newer inputs (or the newest events) until the next rebuild folds it into every checkpoint after
its ``occurred_at``. A reader that knows less than ``C`` (``known_at`` before C was recorded, or an
older watermark) is answered from the inputs alone, filtered on both clocks.

Refreshing is lazy and in two steps: once more than ``REFRESH_AFTER`` positions were added since ``P``,
``states`` extracts just the new events into another inputs file (their JSON is parsed once, ever); the
checkpoints are rebuilt (old checkpoint + newer inputs before each boundary) only by ``lake.checkpoint``
or once more than ``REBUILD_AFTER`` positions wait outside them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .._time import from_micros, to_micros
from ..errors import InvalidArgumentError
from ..store.locks import exclusive
from ..store.reader import translate_errors
from .bounds import Bounds, LakeLike
from .reducers import Reducers

__all__ = ["CheckpointSet", "Every", "clear", "exists", "refresh", "states"]

Every = Literal["hour", "day", "week", "month"]
CACHE_DIR = Path("cache") / "temporal"
REFRESH_AFTER = 100_000
REBUILD_AFTER = 1_000_000
ROW_GROUP = 65_536
_FORMAT = 2
_NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class CheckpointSet:
    """What one checkpoint folder holds (its ``state.json``)."""

    folder: Path
    position: int  # the inputs hold every event of the type up to this position
    recorded_at: datetime  # the newest recorded_at among them
    every: str
    inputs: tuple[tuple[str, int, int], ...]  # (file, after, upto): events with after < position <= upto
    checkpoint_position: int = 0  # the checkpoints reduce the events up to this position
    checkpoint_recorded_at: datetime = _NEVER
    boundaries: tuple[datetime, ...] = ()
    files: tuple[str, ...] = field(default=(), repr=False)

    def to_json(self) -> str:
        return json.dumps({
            "format": _FORMAT, "position": self.position, "recorded_at": to_micros(self.recorded_at),
            "every": self.every, "inputs": [list(i) for i in self.inputs],
            "checkpoint_position": self.checkpoint_position,
            "checkpoint_recorded_at": to_micros(self.checkpoint_recorded_at),
            "boundaries": [to_micros(b) for b in self.boundaries], "files": list(self.files),
        }, indent=1)

    def input_files(self, *, newer: bool) -> list[str]:
        """The inputs the checkpoints already hold (``newer=False``) or not yet (``newer=True``)."""
        return [name for name, after, _ in self.inputs if (after >= self.checkpoint_position) == newer]

    @classmethod
    def load(cls, folder: Path) -> CheckpointSet | None:
        try:
            body = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if body.get("format") != _FORMAT:
            return None
        named = [n for n, _, _ in body["inputs"]] + list(body["files"])
        if not all((folder / name).is_file() for name in named):
            return None  # a file was removed (by lake.forget's purge of derived files, say): rebuild
        return cls(folder, int(body["position"]), from_micros(int(body["recorded_at"])), str(body["every"]),
                   tuple((str(n), int(a), int(u)) for n, a, u in body["inputs"]), int(body["checkpoint_position"]),
                   from_micros(int(body["checkpoint_recorded_at"])),
                   tuple(from_micros(int(b)) for b in body["boundaries"]), tuple(body["files"]))

    def checkpoint_before(self, as_of: datetime | None) -> tuple[datetime, str] | None:
        """The last boundary at or before ``as_of`` (the newest if None) and its file."""
        best = None
        for boundary, name in zip(self.boundaries, self.files):
            if as_of is None or boundary <= as_of:
                best = (boundary, name)
        return best


def folder_for(lake: LakeLike, aggregate_type: str, reducers: Reducers) -> Path:
    return lake._store.folder / CACHE_DIR / aggregate_type / reducers.fingerprint()


def exists(lake: LakeLike, aggregate_type: str, reducers: Reducers) -> bool:
    """Whether the type has a checkpoint set for this declaration (``auto`` then reads it).

    Building one reads and parses every event of the type once (~40 s for 10M events), so ``auto`` never
    starts that on its own: ``lake.checkpoint(cls)`` does, once; afterwards it stays current by itself.
    """
    return CheckpointSet.load(folder_for(lake, aggregate_type, reducers)) is not None


def clear(lake: LakeLike) -> int:
    """Delete every checkpoint of the lake (they are a cache; returns how many sets were removed)."""
    root = lake._store.folder / CACHE_DIR
    removed = len([p for p in root.glob("*/*") if p.is_dir()]) if root.exists() else 0
    shutil.rmtree(root, ignore_errors=True)
    return removed


# -- reading ----------------------------------------------------------------------------------
def states(lake: LakeLike, reducers: Reducers, aggregate_type: str, bounds: Bounds) -> pl.DataFrame:
    """The states of every aggregate of the type: one checkpoint, the inputs after it, the newest events."""
    store = lake._store
    store.refresh()
    folder = folder_for(lake, aggregate_type, reducers)
    current = CheckpointSet.load(folder)
    if current is None or _snapshot_position(lake) - current.position > REFRESH_AFTER:
        every = current.every if current else "month"
        current = refresh(lake, reducers, aggregate_type, every=every, rebuild=None)  # type: ignore[arg-type]
        store.refresh()
    tag = uuid.uuid4().hex[:8]
    names = {k: f"_cp_{k}_{tag}" for k in ("old_inputs", "new_inputs", "checkpoint")}
    reader = store.reader
    with reader.lock, translate_errors(f"states of {aggregate_type} from checkpoints"):
        # Under the lock the snapshot cannot move: "no events after the inputs" stays true for this query.
        live = _snapshot_position(lake) > current.position
        sql, params, checkpoint = _compose(current, reducers, aggregate_type, bounds, live)
        sources = {names["old_inputs"]: [folder / n for n in current.input_files(newer=False)],
                   names["new_inputs"]: [folder / n for n in current.input_files(newer=True)],
                   names["checkpoint"]: [folder / checkpoint] if checkpoint else []}
        names["live"], live_sources = _live_source(lake, aggregate_type, current.position, tag)
        with _views(lake, {**{k: v for k, v in sources.items() if v}, **live_sources}):
            for key, name in names.items():  # plain replace: declared constants may hold braces
                sql = sql.replace("{" + key + "}", name)
            result: pl.DataFrame = reader.con.sql(sql, params=params).pl()
    return result


def _compose(cs: CheckpointSet, reducers: Reducers, aggregate_type: str, bounds: Bounds,
             live: bool) -> tuple[str, list[Any], str | None]:
    """The whole query: later events merged among themselves, then set beside the checkpoint.

    The checkpoint has one row per aggregate, so a full outer join combines it with the merged later
    events more cheaply than grouping its rows again (~16% less CPU on 10M events).
    """
    parts, params, checkpoint = _parts(cs, reducers, aggregate_type, bounds, live=live)
    merge = ",\n  ".join(["aggregate_id", "max(version) AS version", *reducers.merge_select()])
    final = ", ".join(["aggregate_id", "version", *reducers.finish_select()])
    if len(parts) == 1:  # one source of later events: its partial rows are already one per aggregate
        sql = f"WITH delta AS ({parts[0]})"
    else:
        sql = (f"WITH parts AS ({' UNION ALL BY NAME '.join(parts)}),\n"
               f"delta AS (SELECT {merge} FROM parts GROUP BY aggregate_id)")
    if checkpoint is not None:
        combined = ", ".join(reducers.combine_select("c", "d"))
        sql += (f",\nmerged AS (SELECT {combined} FROM {{checkpoint}} c "
                "FULL OUTER JOIN delta d ON c.aggregate_id = d.aggregate_id)")
    sql += f"\nSELECT {final} FROM {'merged' if checkpoint is not None else 'delta'} ORDER BY aggregate_id"
    return sql, params, checkpoint


def _live_source(lake: LakeLike, aggregate_type: str, after: int, tag: str) -> tuple[str, dict[str, list[Path]]]:
    """SQL for the events above position ``after``: the hot rows plus only the sealed files that reach past it.

    The manifest knows each file's position range, so the files sealed before the checkpoint are never
    opened (files are sorted by stream, so row-group statistics alone would not skip them).
    """
    store = lake._store
    entries = {f.path: f for f in store.manifest().files}
    paths = [
        store.folder / path for path in store.reader.files
        if path not in entries or (entries[path].aggregate_type == aggregate_type and entries[path].max_position > after)
    ]
    if not paths:
        return "_hot_events", {}
    name = f"_cp_live_{tag}"
    return f"(SELECT * FROM {name} UNION ALL BY NAME SELECT * FROM _hot_events)", {name: paths}


def _parts(
    cs: CheckpointSet, reducers: Reducers, aggregate_type: str, bounds: Bounds, *, live: bool = True
) -> tuple[list[str], list[Any], str | None]:
    """The SQL of each part to merge, its params, and the checkpoint file it reads.

    Parts (besides the checkpoint at the last boundary B <= as_of): the inputs it already holds, from B
    on; the inputs extracted since it was built; the events after the inputs. ``{old_inputs}``, ``{new_inputs}``,
    ``{checkpoint}`` and ``{live}`` name the views.
    """
    head = "SELECT aggregate_id, max(aggregate_version) AS version, "
    from_inputs = head + ", ".join(reducers.partial_select(lambda name, r: f'"{name}"'))
    both, both_params = bounds.where()
    # The checkpoints hold the events up to checkpoint_position: usable if the reader knows them all.
    usable = (bounds.known_at is None or bounds.known_at >= cs.checkpoint_recorded_at) and (
        bounds.position is None or bounds.position >= cs.checkpoint_position)
    found = cs.checkpoint_before(bounds.as_of) if usable else None
    parts: list[str] = []
    params: list[Any] = []
    old_clauses: list[str] = []
    old_params: list[Any] = []
    if found is not None:  # joined beside the merged later events by the caller
        old_clauses.append("occurred_at >= ?")
        old_params.append(found[0])
    if not usable:
        old_clauses, old_params = both, both_params
    elif bounds.as_of is not None:  # the reader knows every held event: business time alone bounds them
        old_clauses.append("occurred_at <= ?")
        old_params.append(bounds.as_of)
    if cs.input_files(newer=False):
        where = f" WHERE {' AND '.join(old_clauses)}" if old_clauses else ""
        parts.append(f"{from_inputs} FROM {{old_inputs}}{where} GROUP BY aggregate_id")
        params += old_params
    if cs.input_files(newer=True):
        where = f" WHERE {' AND '.join(both)}" if both else ""
        parts.append(f"{from_inputs} FROM {{new_inputs}}{where} GROUP BY aggregate_id")
        params += both_params
    if live or not parts:  # events committed after the inputs (or none at all: an empty, typed part)
        raw = head + ", ".join(reducers.partial_select(lambda name, r: r.value_sql()))
        parts.append(f"{raw} FROM {{live}} WHERE {' AND '.join(['aggregate_type = ?', 'position > ?', *both])} "
                     "GROUP BY aggregate_id")
        params += [aggregate_type, cs.position, *both_params]
    return parts, params, found[1] if found else None


@contextmanager
def _views(lake: LakeLike, sources: dict[str, list[Path]]) -> Iterator[None]:
    """Expose checkpoint files to DuckDB under the given (unique) names; the caller holds the lock."""
    reader = lake._store.reader
    con = reader.con
    try:
        for name, paths in sources.items():
            if reader.safe:  # no file access from SQL in safe mode: hand DuckDB an Arrow dataset
                con.register(name, ds.dataset([str(p) for p in paths], format="parquet"))
            else:
                con.read_parquet([str(p) for p in paths]).create_view(name, replace=True)
        yield
    finally:
        for name in sources:
            if reader.safe:
                con.unregister(name)
            else:
                con.execute(f"DROP VIEW IF EXISTS {name}")


def _snapshot_position(lake: LakeLike) -> int:
    reader = lake._store.reader
    newest = pc.max(reader.hot["position"]).as_py() if reader.hot.num_rows else 0
    return max(reader.sealed_position, newest or 0)


# -- building ---------------------------------------------------------------------------------
def refresh(lake: LakeLike, reducers: Reducers, aggregate_type: str, *, every: Every = "month",
            rebuild: bool | None = True) -> CheckpointSet:
    """Bring the type's checkpoint set up to the lake's newest position.

    New events are extracted into a new inputs file (their JSON is parsed once, ever). Folding them into
    the checkpoints costs a pass over the checkpoints, so it is done when asked (``rebuild=True``, what
    ``lake.checkpoint`` does), or on its own (``rebuild=None``, what ``states`` does) once more than
    ``REBUILD_AFTER`` positions wait outside them; until then queries read those inputs directly.

    Parameters
    ----------
    every
        Where the checkpoints lie: at every ``"hour"``, ``"day"``, ``"week"`` (Mondays) or ``"month"``
        start (UTC) between the first and the last event. Closer checkpoints mean less to add per query.
    """
    if every not in _STEPS:
        raise InvalidArgumentError(f"every must be one of {', '.join(map(repr, _STEPS))}, got {every!r}")
    folder = folder_for(lake, aggregate_type, reducers)
    folder.mkdir(parents=True, exist_ok=True)
    store = lake._store
    with _lock(folder):
        old = CheckpointSet.load(folder)
        store.refresh()
        reader = store.reader
        with reader.lock, translate_errors(f"building checkpoints of {aggregate_type}"):
            current = _extend_inputs(lake, reducers, aggregate_type, folder, old, every)
            stale = old is None or old.every != every or not old.files
            due = rebuild is True or stale or (
                rebuild is None and current.position - current.checkpoint_position > REBUILD_AFTER)
            if due and (stale or current.position != current.checkpoint_position):
                base = None if stale or old is None else (old, current.input_files(newer=True))
                boundaries, files = _write_checkpoints(lake, reducers, folder, [n for n, _, _ in current.inputs],
                                                       every, base)
                current = replace(current, checkpoint_position=current.position,
                                  checkpoint_recorded_at=current.recorded_at, boundaries=boundaries, files=files)
        if current != old:
            tmp = folder / f".state.{uuid.uuid4().hex}.tmp"
            tmp.write_text(current.to_json(), encoding="utf-8")
            os.replace(tmp, folder / "state.json")
        # The previous generation's checkpoints stay until the next rebuild: a reader in another process
        # may have loaded the old state.json a moment ago.
        keep = {*(n for n, _, _ in current.inputs), *current.files, *(old.files if old else ()), "state.json", "lock"}
        for path in folder.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
    return current


def _extend_inputs(lake: LakeLike, reducers: Reducers, aggregate_type: str, folder: Path,
                   old: CheckpointSet | None, every: str) -> CheckpointSet:
    """The set with the events committed since ``old`` extracted into one more inputs file."""
    reader = lake._store.reader
    target = _snapshot_position(lake)
    if old is None:
        old = CheckpointSet(folder, 0, _NEVER, every, (), 0, _NEVER)
    if target == old.position and old.inputs:
        return replace(old, every=every)
    start = old.position
    source, sources = _live_source(lake, aggregate_type, start, uuid.uuid4().hex[:8])
    with _views(lake, sources):
        name = _write_inputs(lake, reducers, aggregate_type, folder, source, (start, target), not old.inputs)
        # A reader knows every input once known_at reaches the newest recorded_at among them.
        newest = reader.con.sql(f"SELECT max(recorded_at) FROM {source} WHERE aggregate_type = ? "
                                "AND position > ? AND position <= ?", params=[aggregate_type, start, target]).fetchall()
    recorded = max(old.recorded_at, newest[0][0]) if newest[0][0] is not None else old.recorded_at
    inputs = old.inputs + ((name, start, target),) if name else old.inputs
    return replace(old, position=target, recorded_at=recorded, every=every, inputs=inputs)


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One builder per checkpoint folder at a time, across processes."""
    with exclusive(folder / "lock"):
        yield


def _write_inputs(lake: LakeLike, reducers: Reducers, aggregate_type: str, folder: Path, source: str,
                  span: tuple[int, int], empty_ok: bool) -> str | None:
    """Extract the reducer values of the type's events in ``(start, target]`` into one sorted file."""
    columns = ["aggregate_id", "aggregate_version", "position", "occurred_at", "recorded_at", "event_type",
               *reducers.input_columns()]
    sql = (f"SELECT {', '.join(columns)} FROM {source} WHERE aggregate_type = ? AND position > ? AND position <= ? "
           "ORDER BY occurred_at, position")
    stream = lake._store.reader.con.sql(sql, params=[aggregate_type, *span]).to_arrow_reader()
    name = f"inputs-{span[1]:012d}-{uuid.uuid4().hex[:8]}.parquet"
    rows = 0
    with pq.ParquetWriter(folder / name, stream.schema, compression="zstd") as writer:
        for batch in stream:
            rows += batch.num_rows
            writer.write_batch(batch, row_group_size=ROW_GROUP)
    if rows == 0 and not empty_ok:
        (folder / name).unlink()
        return None
    return name


def _write_checkpoints(
    lake: LakeLike, reducers: Reducers, folder: Path, inputs: list[str], every: str,
    base: tuple[CheckpointSet, list[str]] | None,
) -> tuple[tuple[datetime, ...], tuple[str, ...]]:
    """Partial states at every boundary, from the narrow inputs.

    Without ``base`` each checkpoint is the previous one plus the inputs between the two boundaries.
    With ``base`` (the old set and its newer inputs), a boundary the old set had is its old checkpoint plus
    the newer inputs before it (a back-dated event lands in every checkpoint after its ``occurred_at``);
    a new boundary is built from the previous one as above.
    """
    con = lake._store.reader.con
    tag = uuid.uuid4().hex[:8]
    view, newer, prev, cur = (f"_cp_{k}_{tag}" for k in ("build", "newer", "prev", "cur"))
    columns = ", ".join(reducers.partial_select(lambda name, r: f'"{name}"'))
    partial = "SELECT aggregate_id, max(aggregate_version) AS version, " + columns + " FROM {src} WHERE {where} GROUP BY aggregate_id"
    merge = ", ".join(["aggregate_id", "max(version) AS version", *reducers.merge_select()])
    old_files = dict(zip(base[0].boundaries, base[0].files)) if base else {}
    sources = {view: [folder / n for n in inputs]}
    if base and base[1]:
        sources[newer] = [folder / n for n in base[1]]
    files: list[str] = []
    with _views(lake, sources):
        lo, hi = con.sql(f"SELECT min(occurred_at), max(occurred_at) FROM {view}").fetchall()[0]
        if lo is None:
            return (), ()
        boundaries = _boundaries(lo, hi, every)
        low: datetime | None = None
        try:
            for boundary in boundaries:
                if boundary in old_files:
                    old_view = f"_cp_old_{tag}"
                    body = f"SELECT * FROM {old_view}"
                    args: list[Any] = []
                    if newer in sources:
                        body += " UNION ALL BY NAME " + partial.format(src=newer, where="occurred_at < ?")
                        args = [boundary]
                    with _views(lake, {old_view: [folder / old_files[boundary]]}):
                        con.execute(f"CREATE OR REPLACE TEMP TABLE {cur} AS SELECT {merge} FROM ({body}) "
                                    "GROUP BY aggregate_id", args)
                elif low is None:
                    con.execute(f"CREATE OR REPLACE TEMP TABLE {cur} AS "
                                + partial.format(src=view, where="occurred_at < ?"), [boundary])
                else:
                    step = partial.format(src=view, where="occurred_at >= ? AND occurred_at < ?")
                    con.execute(f"CREATE OR REPLACE TEMP TABLE {cur} AS SELECT {merge} FROM "
                                f"(SELECT * FROM {prev} UNION ALL BY NAME {step}) GROUP BY aggregate_id",
                                [low, boundary])
                name = f"cp-{tag}-{boundary.strftime('%Y%m%d%H')}.parquet"
                table = con.sql(f"SELECT * FROM {cur} ORDER BY aggregate_id").to_arrow_table()
                pq.write_table(table, folder / name, compression="zstd", row_group_size=ROW_GROUP * 2)
                files.append(name)
                con.execute(f"DROP TABLE IF EXISTS {prev}")
                con.execute(f"ALTER TABLE {cur} RENAME TO {prev}")
                low = boundary
        finally:
            con.execute(f"DROP TABLE IF EXISTS {prev}")
            con.execute(f"DROP TABLE IF EXISTS {cur}")
    return tuple(boundaries), tuple(files)


def _next_month(t: datetime) -> datetime:
    return t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1)


_STEPS = ("hour", "day", "week", "month")
_MAX_BOUNDARIES = 2_000


def _boundaries(lo: datetime, hi: datetime, every: str) -> list[datetime]:
    """Boundaries ``b`` with ``lo < b <= hi`` at the starts of each ``every`` (UTC)."""
    lo, hi = lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)
    size = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}.get(every)

    def step(x: datetime) -> datetime:
        return _next_month(x) if size is None else x + size

    t = lo.replace(minute=0, second=0, microsecond=0)
    if every != "hour":
        t = t.replace(hour=0)
    if every == "week":
        t -= timedelta(days=t.weekday())
    if every == "month":
        t = t.replace(day=1)
    t = step(t)

    out = []
    while t <= hi:
        out.append(t)
        if len(out) > _MAX_BOUNDARIES:
            raise InvalidArgumentError(
                f"every={every!r} gives more than {_MAX_BOUNDARIES} checkpoints between {lo} and {hi}; "
                "pick a coarser step"
            )
        t = step(t)
    return out
