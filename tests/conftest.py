"""Shared fixtures: lakes in ``tmp_path`` that are always closed, and small seeded lakes.

Add fixtures here additively; keep them small and named after what they hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from es_analytics import Lake

# The master key that wraps subjects' keys: one for the whole run (child processes inherit it), in a
# temporary folder instead of the user's configuration folder.
os.environ.setdefault("ES_ANALYTICS_MASTER_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="es-master-")) / "master.key"))


@pytest.fixture(autouse=True)
def _close_lakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Lake]]:
    """Close every Lake a test opened, even when the test fails (and return them for inspection)."""
    opened: list[Lake] = []
    original = Lake.open.__func__  # type: ignore[attr-defined]

    def tracking_open(cls: type[Lake], *args: object, **kwargs: object) -> Lake:
        lake = original(cls, *args, **kwargs)
        opened.append(lake)
        return lake

    monkeypatch.setattr(Lake, "open", classmethod(tracking_open))
    yield opened
    for lake in opened:
        lake.close()


@pytest.fixture
def lake_path(tmp_path: Path) -> Path:
    """A folder for a new lake."""
    return tmp_path / "lake"


@pytest.fixture
def empty_lake(lake_path: Path) -> Lake:
    """An empty lake in ``tmp_path`` (closed after the test)."""
    return Lake.open(lake_path)


@pytest.fixture
def bank_lake(empty_lake: Lake) -> Lake:
    """Three bank accounts written through the domain model (occurred now).

    ``acc-1``: opened with 100, deposit 50, withdraw 30 (balance 120, version 3).
    ``acc-2``: opened with 0, deposit 10, withdraw 10, closed (balance 0, version 4).
    ``acc-3``: opened with 500 (version 1).
    """
    from es_analytics.examples.bank import BankAccount

    def save(account: BankAccount) -> None:
        empty_lake.append(account.aggregate_id, list(account.pending_events), expected_version=0,
                          aggregate_type="BankAccount")

    a = BankAccount("acc-1")
    a.open_account(100, "Ada Almeida")
    a.deposit(50, "Salary")
    a.withdraw(30, "Rent")
    save(a)
    b = BankAccount("acc-2")
    b.open_account(0, "Bruno Berg")
    b.deposit(10, "Gift")
    b.withdraw(10, "Groceries")
    b.close_account("Customer request")
    save(b)
    c = BankAccount("acc-3")
    c.open_account(500, "Chen Costa")
    save(c)
    return empty_lake
