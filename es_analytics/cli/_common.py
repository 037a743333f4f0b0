"""What every command shares: the lake option, time and choice parameters, output, error translation."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, TypeVar

import click
import polars as pl

from ..errors import EsAnalyticsError

__all__ = [
    "LAKE_ENV",
    "Moment",
    "echo_frame",
    "fail",
    "format_option",
    "lake_option",
    "open_lake",
    "translate",
]

LAKE_ENV = "ES_ANALYTICS_LAKE"
F = TypeVar("F", bound=Callable[..., Any])


class Moment(click.ParamType):  # type: ignore[type-arg]
    """A point in time: ISO 8601 with a zone (``2025-06-01T12:00:00Z``, ``…+02:00``), a date (midnight
    UTC), or ``now``. Times without a zone are refused rather than guessed."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if text.lower() == "now":
            return datetime.now(timezone.utc)
        try:
            if len(text) == 10:
                return datetime.combine(date.fromisoformat(text), time(0), tzinfo=timezone.utc)
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            self.fail(f"{text!r} is not an ISO 8601 time such as 2025-06-01 or 2025-06-01T12:00:00Z", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{text!r} has no time zone; add Z (UTC) or an offset such as +02:00", param, ctx)
        return moment


def lake_option(command: F) -> F:
    """``--lake PATH`` (or ``$ES_ANALYTICS_LAKE``), required."""
    return click.option(
        "--lake", "lake_path", envvar=LAKE_ENV, required=True, metavar="PATH",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"The lake folder (default: ${LAKE_ENV}).",
    )(command)


def format_option(*choices: str) -> Callable[[F], F]:
    """``--format`` with the given choices (``table`` first, the default)."""
    def decorate(command: F) -> F:
        return click.option(
            "--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True,
            help="Output format.",
        )(command)

    return decorate


def fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def translate(command: F) -> F:
    """Turn the package's own errors into a one-line message on stderr and exit status 1."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EsAnalyticsError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


@contextmanager
def open_lake(path: Path, *, create: bool = False) -> Iterator[Any]:
    """Open the lake at ``path`` with safe SQL; a missing lake is an error unless ``create``."""
    from ..lake import Lake

    if not create and not (path / "lake.json").is_file():
        raise click.ClickException(
            f"no lake at {str(path)!r}; create one with `es-analytics init --lake {path}` "
            "or point --lake / $ES_ANALYTICS_LAKE at an existing lake"
        )
    lake = Lake.open(path, safe_sql=True)
    try:
        yield lake
    finally:
        lake.close()


def _printable(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested and binary columns as JSON text, so that every format can show them."""
    exprs = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
            exprs.append(pl.col(name).map_elements(
                lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v, default=str),
                return_dtype=pl.String))
        elif dtype == pl.Object or dtype == pl.Binary:
            exprs.append(pl.col(name).map_elements(str, return_dtype=pl.String))
    return frame.with_columns(exprs) if exprs else frame


def echo_frame(frame: pl.DataFrame, fmt: str, *, output: Path | None = None, max_rows: int = 50) -> None:
    """Print ``frame`` as a table, CSV or JSON (or write Parquet to ``output``)."""
    if fmt == "parquet":
        if output is None:
            raise click.ClickException("--format parquet needs --output FILE")
        frame.write_parquet(output)
        click.echo(f"wrote {frame.height:,} rows to {output}", err=True)
        return
    frame = _printable(frame)
    if fmt == "csv":
        text = frame.write_csv()
    elif fmt == "json":
        text = json.dumps(frame.to_dicts(), default=_json_default, ensure_ascii=False, indent=1) + "\n"
    else:
        with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=48, tbl_width_chars=_width(),
                       tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN",
                       tbl_hide_column_data_types=True, thousands_separator=","):
            text = str(frame) + "\n"
        if frame.height > max_rows:
            text += f"({frame.height:,} rows; showing {max_rows}; use --format csv for all)\n"
    if output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {frame.height:,} rows to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _width() -> int:
    try:
        return max(80, min(os.get_terminal_size(sys.stdout.fileno()).columns, 200))
    except OSError:
        return 160


def echo_pairs(pairs: dict[str, Any], fmt: str) -> None:
    """Key/value output: aligned lines, or one JSON object, or a two-column CSV."""
    if fmt == "json":
        click.echo(json.dumps(pairs, default=_json_default, ensure_ascii=False, indent=1))
    elif fmt == "csv":
        echo_frame(pl.DataFrame({"field": list(pairs), "value": [_show(v) for v in pairs.values()]}), "csv")
    else:
        width = max((len(k) for k in pairs), default=0)
        for key, value in pairs.items():
            click.echo(f"{key:<{width}}  {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    return str(value)
