"""The public surface of shared/API.md: every name is there, and nothing is public by accident."""

from __future__ import annotations

import inspect

import es_analytics
from es_analytics import errors

PUBLIC = {
    "Aggregate", "ConcurrencyError", "DomainError", "DomainEvent", "DuplicateEventError", "Event",
    "InvalidArgumentError", "Lake", "Repository", "UpcasterRegistry", "upcaster", "when",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(es_analytics.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(es_analytics, name) is not None


def test_lake_methods_of_the_contract_exist_with_their_keywords(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lake = es_analytics.Lake
    with lake.open(path=tmp_path / "lake") as opened:
        assert opened.current_version("nothing") == 0
    expected = {
        "append": ["aggregate_id", "events", "expected_version", "aggregate_type"],
        "current_version": ["aggregate_id"],
        "events": ["aggregate_id", "from_version", "types", "since", "until", "known_at"],
        "sql": ["query", "params"],
        "seal": [],
        "aggregate": ["aggregate_class", "aggregate_id", "as_of", "known_at", "version"],
        "states": ["aggregate_class", "as_of", "known_at"],
        "events_between": ["start", "end", "types"],
        "project": ["projection", "as_of"],
        "forget": ["subject_id"],
        "close": [],
    }
    for method, names in expected.items():
        params = list(inspect.signature(getattr(lake, method)).parameters)
        params = [p for p in params if p not in ("self", "cls")]
        assert params[: len(names)] == names or set(names) <= set(params), (method, params)
    keyword_only = inspect.signature(lake.append).parameters
    for name in ("expected_version", "aggregate_type"):
        assert keyword_only[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert hasattr(lake, "__enter__") and hasattr(lake, "__exit__")


def test_named_modules_of_the_contract() -> None:
    from es_analytics import charts, patterns
    from es_analytics.examples.bank import BankAccount, account_summary, account_transactions
    from es_analytics.examples.users import User

    assert callable(patterns.analyze) and callable(charts.hourly) and callable(charts.daily)
    for cls in (BankAccount, User):
        assert issubclass(cls, es_analytics.Aggregate)
    assert account_summary is not None and account_transactions is not None


def test_error_hierarchy_has_one_root() -> None:
    assert es_analytics.ConcurrencyError is errors.ConcurrencyError
    assert es_analytics.DuplicateEventError is errors.DuplicateEventError
    assert es_analytics.DomainError is errors.DomainError
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.EsAnalyticsError)
