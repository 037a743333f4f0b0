"""Documentation that runs: the CLI reference matches --help, and the README's Python blocks execute."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from es_analytics.cli import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_cli_reference_is_up_to_date() -> None:
    written = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == reference_markdown(), (
        "docs/cli.md is out of date: run `.venv/bin/python -m es_analytics.cli --write-docs docs/cli.md`")


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == "python"]


def test_readme_has_python_blocks() -> None:
    assert readme_python_blocks()


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block of the README runs on its own, in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(readme_python_blocks()[index], f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102
