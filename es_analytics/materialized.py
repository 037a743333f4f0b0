"""Materialised projections: Parquet in ``<lake>/projections/<name>/``, a checkpoint, incremental refresh, views.

A materialised projection is a folder with ``state.json`` (the files of the table, the checkpoint
``position`` and the definition's fingerprint) and Parquet files:

- :func:`materialize` writes the full build as one file;
- :func:`refresh` reads only the events after the checkpoint and writes the rows they change as one more
  file: for a state projection the changed aggregates' rows (the stored row merged with the new events,
  exact because reducers are mergeable; the newest row per aggregate wins when reading), for an event
  projection the new rows (running totals continue from small *carry* files of each aggregate's latest
  totals). Cost follows the new events, not the table;
- after :data:`MAX_PARTS` files a refresh rewrites them into one (:func:`compact`);
- every file is written under a temporary name, fsynced and renamed; then ``state.json`` is replaced the
  same way and the folder fsynced. A crash leaves the old or the new table, never a mix; replaced files
  stay for one more generation so a reader in another process can finish;
- :func:`install_views` makes each one a DuckDB view of its name on the lake's connection (``lake.sql``),
  re-created whenever its ``state.json`` changes, in any process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import InvalidArgumentError
from .events import check_identifier
from .privacy import Privacy
from .projections import (
    EventProjection,
    Projection,
    StateProjection,
    _check,
    _check_path,
    _present,
    _q,
    _stored,
    latest_sql,
    open_personal,
)
from .store.locks import exclusive
from .store.manifest import fsync_dir
from .store.reader import translate_errors
from .temporal.bounds import Bounds, LakeLike

__all__ = [
    "FOLDER",
    "MAX_PARTS",
    "compact",
    "drop",
    "install_views",
    "materialize",
    "materialized",
    "newest_position",
    "read",
    "read_range",
    "rebuild",
    "refresh",
]

FOLDER = "projections"
_FORMAT = 1
_log = logging.getLogger("es_analytics")


# -- materialised projections ------------------------------------------------------------------
@dataclass(frozen=True)
class _State:
    """What ``projections/<name>/state.json`` says: the files of the table and the checkpoint."""

    name: str
    kind: str
    fingerprint: str
    position: int
    key: str
    columns: tuple[str, ...]
    personal: dict[str, str]
    files: tuple[str, ...]
    carry: tuple[str, ...] = ()
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"format": _FORMAT, **{k: getattr(self, k) for k in self.__dataclass_fields__}}
        body["columns"], body["files"], body["carry"] = list(self.columns), list(self.files), list(self.carry)
        return json.dumps(body, indent=1)

    @classmethod
    def load(cls, folder: Path) -> _State | None:
        try:
            body = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if body.pop("format", None) != _FORMAT:
            return None
        body["columns"], body["files"], body["carry"] = (tuple(body["columns"]), tuple(body["files"]),
                                                        tuple(body.get("carry") or ()))
        return cls(**body)


def folder_of(lake: LakeLike, name: str) -> Path:
    return lake._store.folder / FOLDER / check_identifier(name, "a projection name")


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / "lock"):
        yield


def _write_parquet(folder: Path, prefix: str, table: pa.Table) -> str:
    """Write ``table`` under a temporary name, fsync it, rename it into place; return the file name."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=65_536)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)
    return name


def _publish(folder: Path, state: _State, keep_old: Sequence[str] = ()) -> None:
    """Replace ``state.json`` atomically, then delete files no longer listed (keeping ``keep_old``)."""
    tmp = folder / f".state.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(state.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / "state.json")
    fsync_dir(folder)
    keep = {*state.files, *state.carry, *keep_old, "state.json", "lock"}
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _snapshot_position(lake: LakeLike) -> int:
    store = lake._store
    store.refresh()
    reader = store.reader
    hot = reader.hot
    newest = int(hot["position"][hot.num_rows - 1].as_py()) if hot.num_rows else 0
    return max(reader.sealed_position, newest)


def materialize(lake: LakeLike, projection: Projection) -> dict[str, Any]:
    """Build the projection in full and store it with its checkpoint (replacing any stored version)."""
    _check(projection)
    folder = folder_of(lake, projection.name)
    with _lock(folder):
        return _materialize(lake, projection, folder)


def _materialize(lake: LakeLike, projection: Projection, folder: Path) -> dict[str, Any]:
    old = _State.load(folder)
    position = _snapshot_position(lake)
    bounds = Bounds(position=position)
    frame = _stored(lake, projection, bounds)
    files = (_write_parquet(folder, f"data-{position}", frame.to_arrow()),)
    carry: tuple[str, ...] = ()
    if isinstance(projection, EventProjection) and projection.running:
        with _scratch(lake, {"_rows": [folder / files[0]]}) as con:
            carry = (_write_parquet(folder, f"carry-{position}", con.sql(projection.carry_sql("_rows"))
                                    .to_arrow_table()),)
    state = _State(projection.name, projection.kind, projection.fingerprint(), position, projection.key,
                   tuple(projection.columns), projection.personal, files, carry, frame.height)
    _publish(folder, state, old.files if old else ())
    return {"name": projection.name, "position": position, "rows": frame.height, "mode": "full"}


def refresh(lake: LakeLike, projection: Projection) -> dict[str, Any]:
    """Apply the events after the stored checkpoint (a full build if none is stored or its definition changed).

    Returns ``name, position, rows, mode`` (``"full"``, ``"incremental"`` or ``"current"``) and ``events``,
    how many new events of the projection's aggregate type were applied.
    """
    _check(projection)
    folder = folder_of(lake, projection.name)
    with _lock(folder):
        old = _State.load(folder)
        if old is None or old.fingerprint != projection.fingerprint() or old.columns != tuple(projection.columns):
            return _materialize(lake, projection, folder)
        position = _snapshot_position(lake)
        if position == old.position:
            return {"name": projection.name, "position": position, "rows": old.rows, "mode": "current", "events": 0}
        return _refresh(lake, projection, folder, old, position)


def _refresh(lake: LakeLike, projection: Projection, folder: Path, old: _State, position: int) -> dict[str, Any]:
    """Write the rows the new events change as one more file (compacting once there are many)."""
    sources = {"_old": [folder / f for f in old.files]}
    if old.carry:
        sources["_carry"] = [folder / f for f in old.carry]
    files, rows, carry = old.files, old.rows, old.carry
    with _scratch(lake, sources) as con, _delta(lake, old.position, position, projection.aggregate_type) as delta:
        new_events = int(con.sql(f"SELECT count(*) FROM {delta} WHERE aggregate_type = ?",
                                 params=[projection.aggregate_type]).fetchall()[0][0])
        if new_events and isinstance(projection, StateProjection):
            table = con.sql(projection.refresh_sql(delta, "_old"), params=[projection.aggregate_type]).to_arrow_table()
            rows += int(pc.sum(table["__new"]).as_py() or 0)  # aggregates seen for the first time
            table = table.drop_columns(["__new"])
            files = (*old.files, _write_parquet(folder, f"part-{position}", table))
        elif new_events:
            assert isinstance(projection, EventProjection)
            table = con.sql(projection.refresh_sql(delta, "_carry" if old.carry else None),
                            params=[projection.aggregate_type]).to_arrow_table()
            if table.num_rows:
                files, rows = (*old.files, _write_parquet(folder, f"part-{position}", table)), rows + table.num_rows
                if projection.running:
                    con.register("_added", table)
                    carry = (*old.carry, _write_parquet(folder, f"carry-{position}",
                                                        con.sql(projection.carry_sql("_added")).to_arrow_table()))
                    con.unregister("_added")
    state = _State(projection.name, projection.kind, projection.fingerprint(), position, projection.key,
                   tuple(projection.columns), projection.personal, files, carry, rows)
    _publish(folder, state)
    compacted = len(files) > MAX_PARTS
    if compacted:
        _compact(lake, projection, folder, state)
    return {"name": projection.name, "position": position, "rows": rows, "mode": "incremental",
            "events": new_events, "compacted": compacted}


MAX_PARTS = 16
"""A materialised projection is rewritten into one file once a refresh leaves more files than this."""


def _compact(lake: LakeLike, projection: Projection, folder: Path, state: _State) -> None:
    """Rewrite the files into one (state: the newest row per aggregate; events: the rows in order)."""
    sources = {"_all": [folder / f for f in state.files]}
    if state.carry:
        sources["_carry"] = [folder / f for f in state.carry]
    with _scratch(lake, sources) as con:
        if isinstance(projection, StateProjection):
            table = con.sql(f"{latest_sql('_all')} ORDER BY aggregate_id").to_arrow_table()
        else:
            table = con.sql("SELECT * FROM _all ORDER BY position").to_arrow_table()
        files = (_write_parquet(folder, f"data-{state.position}", table),)
        carry = state.carry
        if state.carry and isinstance(projection, EventProjection):
            latest = con.sql("SELECT * FROM _carry QUALIFY row_number() OVER (PARTITION BY aggregate_id "
                             "ORDER BY position DESC) = 1").to_arrow_table()
            carry = (_write_parquet(folder, f"carry-{state.position}", latest),)
    _publish(folder, _State(**{**state.__dict__, "files": files, "carry": carry}), (*state.files, *state.carry))


def compact(lake: LakeLike, projection: Projection) -> dict[str, Any]:
    """Rewrite a materialised projection's files into one now (refresh does it after ``MAX_PARTS`` files)."""
    _check(projection)
    folder = folder_of(lake, projection.name)
    with _lock(folder):
        state = _State.load(folder)
        if state is None:
            raise InvalidArgumentError(f"projection {projection.name!r} is not materialised in this lake")
        _compact(lake, projection, folder, state)
    return {"name": projection.name, "files_before": len(state.files)}


def rebuild(lake: LakeLike, projection: Projection) -> dict[str, Any]:
    """Throw the stored table away and build it again from every event."""
    _check(projection)
    folder = folder_of(lake, projection.name)
    with _lock(folder):
        for path in folder.iterdir():
            if path.name != "lock":
                path.unlink()
        return _materialize(lake, projection, folder)


def drop(lake: LakeLike, name: str) -> bool:
    """Delete a materialised projection (its view disappears with the next query). True if it existed."""
    folder = folder_of(lake, name)
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def read(lake: LakeLike, projection: Projection) -> pl.DataFrame:
    """The stored table of a materialised projection (after bringing it up to date)."""
    refresh(lake, projection)
    folder = folder_of(lake, projection.name)
    state = _State.load(folder)
    assert state is not None
    with _scratch(lake, {"_all": [folder / f for f in state.files]}) as con:
        if state.kind == "state":
            frame = con.sql(f"{latest_sql('_all')} ORDER BY aggregate_id").pl()
        else:
            frame = con.sql("SELECT * FROM _all ORDER BY position").pl()
    return _present(lake, projection, frame)


def materialized(lake: LakeLike) -> pl.DataFrame:
    """The materialised projections of the lake: ``name, kind, position, rows, behind, files``.

    ``behind`` counts the positions committed after the projection's checkpoint.
    """
    root = lake._store.folder / FOLDER
    states = [s for s in (_State.load(p) for p in sorted(root.iterdir()) if p.is_dir()) if s] if root.exists() else []
    newest = _snapshot_position(lake)
    return pl.DataFrame(
        {"name": [s.name for s in states], "kind": [s.kind for s in states],
         "position": [s.position for s in states], "rows": [s.rows for s in states],
         "behind": [newest - s.position for s in states], "files": [len(s.files) for s in states]},
        schema={"name": pl.String, "kind": pl.String, "position": pl.Int64, "rows": pl.Int64,
                "behind": pl.Int64, "files": pl.Int64},
    )


# -- DuckDB plumbing ---------------------------------------------------------------------------
@contextmanager
def _scratch(lake: LakeLike, sources: Mapping[str, Sequence[Path]]) -> Iterator[Any]:
    """The lake's DuckDB connection (locked) with Parquet files exposed under temporary names."""
    reader = lake._store.reader
    with reader.lock, translate_errors("projection"):
        con = reader.con
        try:
            for name, paths in sources.items():
                _expose(reader, name, paths)
            yield con
        finally:
            for name in sources:
                _hide(reader, name)


def _expose(reader: Any, name: str, paths: Sequence[Path]) -> None:
    """Parquet files as a view (an Arrow dataset in safe mode, where SQL may not read files)."""
    if reader.safe:
        reader.con.register(name, ds.dataset([str(p) for p in paths], format="parquet"))
    else:
        reader.con.read_parquet([str(p) for p in paths], hive_partitioning=False).create_view(name, replace=True)


def _hide(reader: Any, name: str) -> None:
    if reader.safe:
        reader.con.unregister(name)
    else:
        reader.con.execute(f"DROP VIEW IF EXISTS {name}")


@contextmanager
def _delta(lake: LakeLike, after: int, upto: int, aggregate_type: str | None) -> Iterator[str]:
    """A view of the events with ``after < position <= upto``, reading only the files that can hold them.

    The caller holds the reader's lock.
    """
    store = lake._store
    reader = store.reader
    con = reader.con
    paths = [str(store.folder / f.path) for f in store.manifest().files
             if f.max_position > after and f.min_position <= upto
             and aggregate_type in (None, f.aggregate_type)]
    view = f"_delta_{uuid.uuid4().hex[:8]}"
    con.register(f"{view}_hot", reader.hot)
    parts = [f"SELECT * FROM {view}_hot"]
    if paths:
        _expose(reader, f"{view}_files", [Path(p) for p in paths])
        parts.append(f"SELECT * FROM {view}_files")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM ({' UNION ALL '.join(parts)}) "
                f"WHERE position > {int(after)} AND position <= {int(upto)}")
    try:
        yield view
    finally:
        con.execute(f"DROP VIEW IF EXISTS {view}")
        con.unregister(f"{view}_hot")
        if paths:
            _hide(reader, f"{view}_files")


def read_range(lake: LakeLike, after: int, upto: int, aggregate_type: str | None = None) -> pl.DataFrame:
    """The events with ``after < position <= upto`` (of one aggregate type), by position, as readers see them.

    Reads the hot rows and only the sealed files whose positions overlap the range (what processors poll).
    """
    reader = lake._store.reader
    where, params = ("WHERE aggregate_type = ?", [aggregate_type]) if aggregate_type else ("", [])
    with reader.lock, translate_errors("reading events by position"), _delta(lake, after, upto, aggregate_type) as view:
        frame = reader.con.sql(f"SELECT * FROM {view} {where} ORDER BY position", params=params).pl()
    return lake._present(frame)


def newest_position(lake: LakeLike) -> int:
    """The newest committed position (after bringing the lake's snapshot up to date)."""
    return _snapshot_position(lake)


def install_views(lake: LakeLike, cache: dict[str, Any]) -> None:
    """(Re)create a DuckDB view per materialised projection whose ``state.json`` changed since the last call.

    ``cache`` is the lake's memo of what is installed; views of dropped projections are removed.
    """
    root = lake._store.folder / FOLDER
    stamps: dict[str, int] = {}
    if root.exists():
        for entry in os.scandir(root):
            try:
                stamps[entry.name] = os.stat(os.path.join(entry.path, "state.json")).st_mtime_ns
            except FileNotFoundError:
                continue
    con_id = id(lake._store.reader.con)
    if cache.get("con") == con_id and cache.get("stamps") == stamps:
        return
    reader = lake._store.reader
    with reader.lock, translate_errors("installing projection views"):
        _install_udf(reader.con, lake, cache, con_id)
        for name in set(cache.get("stamps", {})) - set(stamps):
            reader.con.execute(f"DROP VIEW IF EXISTS {_q(check_identifier(name, 'a projection name'))}")
            reader.con.unregister(f"_projection_{name}")
        for name in stamps:
            state = _State.load(root / name)
            if state is None or state.name != name:
                continue
            try:
                _install_view(reader.con, root / name, state)
            except (OSError, pa.ArrowException, InvalidArgumentError) as exc:
                # one damaged projection must not break every query of the lake
                _log.warning("projection view %s not installed: %s (rebuild it with lake.rebuild)", name, exc)
    cache.update(con=con_id, stamps=stamps)


def _install_view(con: Any, folder: Path, state: _State) -> None:
    name = check_identifier(state.name, "a projection name")
    key = check_identifier(state.key, "the key column name")
    con.register(f"_projection_{name}", ds.dataset([str(folder / f) for f in state.files], format="parquet"))
    items = []
    for column in state.columns:
        check_identifier(column, "a projection column")
        source = "aggregate_id" if column == key else column
        if column in state.personal:
            path = _check_path(state.personal[column])
            id_column = f"{column}__e" if state.kind == "state" else "event_id"
            items.append(f"es_open_personal({_q(column)}, {_q(id_column)}, '{path}') AS {_q(column)}")
        else:
            items.append(f"{_q(source)} AS {_q(column)}")
    source = f"({latest_sql(f'_projection_{name}')})" if state.kind == "state" else f"_projection_{name}"
    con.execute(f"CREATE OR REPLACE VIEW {_q(name)} AS SELECT {', '.join(items)} FROM {source}")


def _install_udf(con: Any, lake: LakeLike, cache: dict[str, Any], con_id: int) -> None:
    if cache.get("udf") == con_id:
        return
    import duckdb

    privacy: Privacy = lake._privacy  # type: ignore[attr-defined]

    def open_column(values: pa.ChunkedArray, ids: pa.ChunkedArray, paths: pa.ChunkedArray) -> pa.Array:
        frame = pl.DataFrame({"v": values, "e": ids, "p": paths},
                             schema={"v": pl.String, "e": pl.String, "p": pl.String})
        path = frame["p"][0] if frame.height else ""
        return open_personal(frame, privacy, "v", "e", path)["v"].to_arrow()

    text = duckdb.sqltype("VARCHAR")
    try:
        con.remove_function("es_open_personal")
    except duckdb.InvalidInputException:
        pass
    con.create_function("es_open_personal", open_column, [text, text, text], text, type="arrow",
                        side_effects=False)
    cache["udf"] = con_id
