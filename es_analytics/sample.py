"""Deterministic sample data: bank accounts and users with a realistic rhythm, of any size.

``generate(lake, events=N, seed=S)`` writes about N events into an empty lake, the same events for the same
arguments on every machine. What the data holds, so that every feature has something to show:

- ``BankAccount`` streams: ``AccountOpened``, then deposits and withdrawals (never overdrawn), a few
  ``AccountClosed`` after a closing withdrawal. Activity follows a daily rhythm (busy office hours, quiet
  nights) and a weekly one (quieter weekends).
- Back-dated corrections (``occurred_at`` days before the previous event, recorded later) and late-recorded
  events (recorded hours after they occurred), so "as of" and "as known at" differ.
- ``User`` streams: ``UserRegistered`` in schema versions 1, 2 (the seed's ``{id, email, name}``) and 3
  (older versions earlier in time) with personal data (unique e-mail address and name), and some
  ``UserSuspended``. The personal fields are stored encrypted per user (``es_analytics.privacy``): the
  ciphertext differs from run to run, what every reader sees does not.
- Metadata with ``user_id`` (the actor), ``correlation_id``, ``causation_id`` and ``command``.

Events are built column-wise (numpy, polars) in stream chunks, put in commit (``recorded_at``) order and
streamed into the lake in batches through the bulk import path, so memory stays bounded by a compact
numeric skeleton (about 60 bytes per event), never the whole JSON history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from ._time import now_utc, to_micros, to_utc
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .lake import Lake

__all__ = ["SampleSpec", "generate", "plan"]

_DAY = 86_400_000_000
_HOUR = 3_600_000_000
_STREAM_CHUNK = 25_000
_BATCH = 500_000
_HOUR_WEIGHTS = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4.5, 6.5, 7.0, 6.8, 6.0, 6.4, 6.6, 6.2, 5.8, 6.0, 5.0, 4.0,
     3.2, 2.6, 2.0, 1.4]
)
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
_FIRST = ["Ada", "Bruno", "Chen", "Dara", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Luca",
          "Mina", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wim", "Yara"]
_LAST = ["Almeida", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haas", "Ivanova", "Jansen",
         "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Schmidt", "Tanaka", "Visser"]
_DEPOSITS = ["Salary", "Transfer in", "Cash deposit", "Refund", "Interest", "Gift"]
_WITHDRAWALS = ["Rent", "Groceries", "ATM withdrawal", "Utilities", "Transfer out", "Card payment"]
_CLOSE_REASONS = ["Customer request", "Moved abroad", "Account consolidation"]
_SUSPEND_REASONS = ["Suspicious activity", "Terms of service violation", "Chargeback dispute"]
_TELLERS = 24

# Event kinds in the numeric skeleton.
_OPENED, _DEPOSITED, _WITHDRAWN, _CLOSED, _REGISTERED, _SUSPENDED = range(6)


@dataclass(frozen=True)
class SampleSpec:
    """How many of each thing a sample of ``events`` events holds (see :func:`plan`)."""

    events: int
    accounts: int
    users: int
    seed: int
    start: datetime
    days: int


def plan(events: int = 20_000, *, seed: int = 7, start: datetime | None = None, days: int = 365) -> SampleSpec:
    """Validate the arguments of :func:`generate` and size the sample.

    Examples
    --------
    >>> spec = plan(20_000)
    >>> (spec.accounts, spec.users)
    (1052, 615)
    """
    if isinstance(events, bool) or not isinstance(events, int) or events < 100:
        raise InvalidArgumentError(f"events must be an int of at least 100, got {events!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(days, bool) or not isinstance(days, int) or not 7 <= days <= 3650:
        raise InvalidArgumentError(f"days must be an int from 7 to 3650, got {days!r}")
    begin = datetime(2025, 1, 1, tzinfo=timezone.utc) if start is None else to_utc(start, "start")
    if begin + timedelta(days=days + 30) > now_utc():
        raise InvalidArgumentError(
            f"the sample period {begin.date()} + {days} days (+30 days of late records) reaches into the "
            "future; pick an earlier start"
        )
    users = max(1, round(events * 0.04 / 1.3))
    bank_events = events - round(users * 1.3)
    accounts = max(1, round(bank_events / 18.25))
    return SampleSpec(events, accounts, users, seed, begin, days)


def generate(
    lake: Lake,
    *,
    events: int = 20_000,
    seed: int = 7,
    start: datetime | None = None,
    days: int = 365,
    progress: bool = False,
) -> dict[str, Any]:
    """Write about ``events`` deterministic sample events into an empty ``lake``.

    Parameters
    ----------
    lake
        An empty lake (sample history is recorded in the past, so it cannot follow newer events).
    events
        About how many events to write (the exact count is returned).
    seed
        Same seed, same events.
    start, days
        The business-time window the history covers (default 2025-01-01 and 365 days).
    progress
        Show a progress bar (tqdm) while writing.

    Returns
    -------
    dict
        ``events``, ``accounts``, ``users``, ``first_position``, ``last_position``, ``seconds``.

    Examples
    --------
    >>> import tempfile
    >>> from es_analytics import Lake
    >>> with Lake.open(tempfile.mkdtemp()) as lake:
    ...     generate(lake, events=2_000)["accounts"]
    105
    """
    import time

    from .examples import users  # noqa: F401  declares the users' personal fields, encrypted on import

    spec = plan(events, seed=seed, start=start, days=days)
    store = lake._store
    if store.hot.max_position() != 0:
        raise InvalidArgumentError(
            f"generate writes history recorded in the past, so it needs an empty lake; {lake.path} has events"
        )
    began = time.perf_counter()
    skeleton = _skeleton(spec)
    total = skeleton.height
    bar = _progress(total, progress)
    first = last = 0
    for offset in range(0, total, _BATCH):
        table = _materialise(skeleton.slice(offset, _BATCH), spec)
        result = store.import_table(table, keep_recorded_at=True, trusted=True)
        first = first or int(result["first_position"])
        last = int(result["last_position"])
        bar(table.num_rows)
    bar(0, close=True)
    store.compact()
    return {
        "events": total,
        "accounts": spec.accounts,
        "users": spec.users,
        "first_position": first,
        "last_position": last,
        "seconds": round(time.perf_counter() - began, 2),
    }


def _progress(total: int, enabled: bool) -> Callable[..., None]:
    if not enabled:
        return lambda n, close=False: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="event", desc="generating sample")

    def step(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return step


# -- the numeric skeleton ---------------------------------------------------------------------
def _skeleton(spec: SampleSpec) -> pl.DataFrame:
    """Every event as numbers, in commit order: stream, kind, version, times, amounts, choices."""
    rng = np.random.default_rng(spec.seed)
    t0 = to_micros(spec.start)
    parts = [_accounts(rng, spec, t0, lo, min(lo + _STREAM_CHUNK, spec.accounts))
             for lo in range(0, spec.accounts, _STREAM_CHUNK)]
    parts.append(_users(rng, spec, t0))
    columns = parts[0].columns
    frame = pl.concat([p.select(columns) for p in parts], how="vertical")
    # Commit order: recorded_at, then stream and version so ties are deterministic.
    return frame.sort(["recorded_at", "stream", "aggregate_version"])


def _event_times(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, t0: int) -> np.ndarray:
    """Times between lo and hi (µs) with a daily and weekly rhythm."""
    day = np.floor(rng.uniform(lo, hi) / _DAY).astype(np.int64)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    weekend = weekday >= 5
    shift = rng.random(day.size) < 0.45
    # move some weekend activity to a random weekday of the same week (quieter weekends, flat weekdays)
    day = np.where(weekend & shift, day - weekday + rng.integers(0, 5, day.size), day)
    hour = rng.choice(24, size=day.size, p=_HOUR_P)
    micros = day * _DAY + hour * _HOUR + rng.integers(0, _HOUR, day.size)
    clipped: np.ndarray = np.clip(micros, lo, None)
    return clipped


def _accounts(rng: np.random.Generator, spec: SampleSpec, t0: int, lo_id: int, hi_id: int) -> pl.DataFrame:
    n = hi_id - lo_id
    span = spec.days * _DAY
    opened = t0 + (rng.random(n) * 0.85 * span).astype(np.int64)
    opened = _event_times(rng, opened, opened + _DAY, t0)
    n_tx = rng.poisson(17.0, n)
    closing = rng.random(n) < 0.08
    owner = np.repeat(np.arange(n), n_tx)
    occurred = _event_times(rng, opened[owner] + _HOUR, np.full(owner.size, t0 + span), t0)
    lag = rng.integers(20_000, 2_000_000, owner.size)
    recorded = occurred + lag
    late = rng.random(owner.size) < 0.005
    recorded = np.where(late, occurred + rng.integers(2 * _HOUR, 72 * _HOUR, owner.size), recorded)
    backdated = rng.random(owner.size) < 0.01
    occurred = np.where(backdated, np.maximum(occurred - rng.integers(_DAY, 20 * _DAY, owner.size),
                                              opened[owner] + 1), occurred)
    kind = np.where(rng.random(owner.size) < 0.56, _DEPOSITED, _WITHDRAWN).astype(np.int8)
    kind = np.where(backdated, _DEPOSITED, kind).astype(np.int8)
    tx = pl.DataFrame({"owner": owner, "occurred_at": occurred, "recorded_at": recorded, "kind": kind,
                       "correction": backdated})
    tx = tx.sort(["owner", "recorded_at"])
    initial = np.where(rng.random(n) < 0.1, 0, rng.lognormal(10.5, 1.0, n).astype(np.int64))
    amounts = _balances(rng, tx, initial)
    tx = tx.with_columns(amount=amounts[0], new_balance=amounts[1], kind=pl.Series(amounts[2], dtype=pl.Int8))
    open_rows = pl.DataFrame({"owner": np.arange(n), "occurred_at": opened, "recorded_at": opened + 150_000,
                              "kind": np.full(n, _OPENED, np.int8), "correction": np.zeros(n, bool),
                              "amount": initial, "new_balance": initial})
    last = tx.group_by("owner").agg(pl.col("recorded_at").max(), pl.col("new_balance").last())
    ends = pl.DataFrame({"owner": np.arange(n)}).join(last, on="owner", how="left").with_columns(
        pl.col("recorded_at").fill_null(pl.Series(opened + 150_000)), pl.col("new_balance").fill_null(pl.Series(initial)))
    closers = ends.filter(pl.Series(closing))
    closed_at = closers["recorded_at"].to_numpy() + rng.integers(_DAY, 5 * _DAY, closers.height)
    drain = closers.select("owner").with_columns(
        occurred_at=pl.Series(closed_at), recorded_at=pl.Series(closed_at + 90_000),
        kind=pl.lit(_WITHDRAWN, pl.Int8), correction=pl.lit(False), amount=closers["new_balance"],
        new_balance=pl.lit(0, pl.Int64))
    close = drain.with_columns(occurred_at=pl.col("occurred_at") + 60_000_000,
                               recorded_at=pl.col("recorded_at") + 60_000_000,
                               kind=pl.lit(_CLOSED, pl.Int8), amount=pl.lit(0, pl.Int64))
    drain = drain.filter(pl.col("amount") > 0)  # an empty account closes without a final withdrawal
    frame = pl.concat([open_rows, tx.select(open_rows.columns), drain.select(open_rows.columns),
                       close.select(open_rows.columns)])
    frame = frame.sort(["owner", "recorded_at"]).with_columns(
        (pl.col("owner") + lo_id).cast(pl.Int64).alias("stream"),
        pl.int_range(1, pl.len() + 1).over("owner").cast(pl.Int64).alias("aggregate_version"),
        pl.lit(0, pl.Int8).alias("domain"),
    ).drop("owner")
    return _decorate(rng, frame)


def _balances(
    rng: np.random.Generator, tx: pl.DataFrame, initial: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amounts (cents), balances after each transaction and final kinds, in version order, never
    overdrawn, no withdrawal of nothing."""
    owner = tx["owner"].to_numpy()
    kind = tx["kind"].to_numpy()
    index = tx.select(pl.int_range(0, pl.len()).over("owner")).to_series().to_numpy()
    width = int(index.max()) + 1 if index.size else 0
    grid_kind = np.full((initial.size, width), -1, np.int8)
    grid_kind[owner, index] = kind
    deposits = rng.lognormal(9.5, 1.1, (initial.size, width)).astype(np.int64) + 100
    share = rng.uniform(0.05, 0.6, (initial.size, width))
    balance = initial.astype(np.int64).copy()
    amount = np.zeros((initial.size, width), np.int64)
    after = np.zeros((initial.size, width), np.int64)
    for k in range(width):
        col = grid_kind[:, k]
        take = np.where(col == _WITHDRAWN, (balance * share[:, k]).astype(np.int64), 0)
        # a withdrawal that would move nothing (an empty account) becomes a deposit instead
        col = np.where((col == _WITHDRAWN) & (take == 0), _DEPOSITED, col).astype(np.int8)
        grid_kind[:, k] = col
        give = np.where(col == _DEPOSITED, deposits[:, k], 0)
        amount[:, k] = take + give
        balance = balance - take + give
        after[:, k] = balance
    return amount[owner, index], after[owner, index], grid_kind[owner, index]


def _users(rng: np.random.Generator, spec: SampleSpec, t0: int) -> pl.DataFrame:
    n = spec.users
    span = spec.days * _DAY
    registered = _event_times(rng, np.full(n, t0), np.full(n, t0 + span), t0)
    share = (registered - t0) / span
    version = np.where(share < 0.3, 1, np.where(share < 0.6, 2, 3)).astype(np.int8)
    suspended = rng.random(n) < 0.3
    when = registered + rng.integers(_DAY, 60 * _DAY, n)
    reg = pl.DataFrame({"stream": np.arange(n, dtype=np.int64), "occurred_at": registered,
                        "recorded_at": registered + 200_000, "kind": np.full(n, _REGISTERED, np.int8),
                        "correction": np.zeros(n, bool), "amount": version.astype(np.int64),
                        "new_balance": np.zeros(n, np.int64), "aggregate_version": np.ones(n, np.int64)})
    sus = reg.filter(pl.Series(suspended)).with_columns(
        occurred_at=pl.Series(when[suspended]), recorded_at=pl.Series(when[suspended] + 300_000),
        kind=pl.lit(_SUSPENDED, pl.Int8), amount=pl.lit(0, pl.Int64), aggregate_version=pl.lit(2, pl.Int64))
    frame = pl.concat([reg, sus]).with_columns(pl.lit(1, pl.Int8).alias("domain"))
    return _decorate(rng, frame)


def _decorate(rng: np.random.Generator, frame: pl.DataFrame) -> pl.DataFrame:
    """Random choices that only shape the text: descriptions, actors, correlation ids."""
    n = frame.height
    return frame.with_columns(
        choice=pl.Series(rng.integers(0, 1 << 30, n), dtype=pl.Int64),
        actor=pl.Series(rng.integers(0, _TELLERS, n), dtype=pl.Int16),
        correlation=pl.Series(rng.integers(0, 1 << 62, n), dtype=pl.Int64),
    )


# -- materialising a batch ---------------------------------------------------------------------
def _fmt(template: str, *values: pl.Expr) -> pl.Expr:
    """``template`` with each ``{}`` replaced by the next expression (other braces stay literal)."""
    pieces = template.split("{}")
    if len(pieces) != len(values) + 1:
        raise ValueError(f"template {template!r} needs {len(pieces) - 1} values, got {len(values)}")
    exprs: list[pl.Expr] = [pl.lit(pieces[0])]
    for value, piece in zip(values, pieces[1:]):
        exprs += [value.cast(pl.String), pl.lit(piece)]
    return pl.concat_str(exprs)


def _cents(col: str) -> pl.Expr:
    whole = (pl.col(col) // 100).cast(pl.String)
    frac = (pl.col(col) % 100).cast(pl.String).str.zfill(2)
    return pl.concat_str([whole, pl.lit("."), frac])


def _pick(options: list[str], col: str = "choice") -> pl.Expr:
    return pl.lit(pl.Series(options)).gather(pl.col(col) % len(options))


def _materialise(batch: pl.DataFrame, spec: SampleSpec) -> pa.Table:
    """Turn skeleton rows into event records (JSON payloads and metadata) as an Arrow table."""
    kind = pl.col("kind")
    account_id = _fmt("acc-{}", pl.col("stream").cast(pl.String).str.zfill(7))
    user_id = _fmt("user-{}", pl.col("stream").cast(pl.String).str.zfill(7))
    holder = pl.concat_str([_pick(_FIRST, "stream"), pl.lit(" "), _pick(_LAST, "correlation")])
    person = pl.concat_str([_pick(_FIRST, "stream"), pl.lit(" "), _pick(_LAST, "choice"), pl.lit(" "),
                            pl.col("stream").cast(pl.String)])
    email = _fmt("user{}.{}@example.org", pl.col("stream"), pl.col("choice") % 997)
    occurred_iso = pl.from_epoch(pl.col("occurred_at"), time_unit="us").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
    money = _fmt('{"amount":{},"description":"{}","newBalance":{}}', _cents("amount"),
                      pl.when(pl.col("correction")).then(pl.lit("Correction of a missed deposit"))
                      .when(kind == _DEPOSITED).then(_pick(_DEPOSITS)).otherwise(_pick(_WITHDRAWALS)),
                      _cents("new_balance"))
    registered = (
        pl.when(pl.col("amount") <= 2)  # v1 and v2 share the seed's payload {id, email, name}
        .then(_fmt('{"id":"{}","email":"{}","name":"{}"}', user_id, email, person))
        .otherwise(_fmt('{"userId":"{}","profile":{"email":"{}","name":"{}"},"preferences":{"newsletter":{}}}',
                             user_id, email, person,
                             pl.when(pl.col("choice") % 3 == 0).then(pl.lit("true")).otherwise(pl.lit("false"))))
    )
    data = (
        pl.when(kind == _OPENED)
        .then(_fmt('{"accountId":"{}","initialDeposit":{},"accountHolder":"{}"}', account_id,
                        _cents("amount"), holder))
        .when(kind.is_in([_DEPOSITED, _WITHDRAWN])).then(money)
        .when(kind == _CLOSED)
        .then(_fmt('{"reason":"{}","closedAt":"{}"}', _pick(_CLOSE_REASONS), occurred_iso))
        .when(kind == _REGISTERED).then(registered)
        .otherwise(_fmt('{"reason":"{}","suspendedBy":"admin-{}"}', _pick(_SUSPEND_REASONS),
                             pl.col("actor") % 3))
    )
    command = _pick(["open_account", "deposit", "withdraw", "close_account", "register", "suspend"], "kind")
    actor = pl.when(kind.is_in([_REGISTERED])).then(user_id).otherwise(
        _fmt("teller-{}", pl.col("actor").cast(pl.String).str.zfill(2)))
    correlation = _fmt("corr-{}", pl.col("correlation").cast(pl.String))
    metadata = _fmt('{"user_id":"{}","correlation_id":"{}","causation_id":"{}","command":"{}"}',
                         actor, correlation, correlation, command)
    event_type = _pick(["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed",
                        "UserRegistered", "UserSuspended"], "kind")
    seed_tag = f"s{spec.seed}-"
    out = batch.select(
        _fmt("{}{}-{}-{}", pl.lit(seed_tag), pl.col("domain"), pl.col("stream"),
                  pl.col("aggregate_version")).alias("event_id"),
        event_type.alias("event_type"),
        pl.when(kind == _REGISTERED).then(pl.col("amount")).otherwise(1).cast(pl.Int32).alias("schema_version"),
        pl.when(pl.col("domain") == 0).then(pl.lit("BankAccount")).otherwise(pl.lit("User")).alias("aggregate_type"),
        pl.when(pl.col("domain") == 0).then(account_id).otherwise(user_id).alias("aggregate_id"),
        pl.col("aggregate_version"),
        pl.from_epoch(pl.col("occurred_at"), time_unit="us").dt.replace_time_zone("UTC").alias("occurred_at"),
        pl.from_epoch(pl.col("recorded_at"), time_unit="us").dt.replace_time_zone("UTC").alias("recorded_at"),
        data.alias("data"),
        metadata.alias("metadata"),
    )
    return out.to_arrow()
