"""The CLI's inputs: recipient CSVs, splitting at the API's bound, token lifetimes."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from dispatcher.commands.send import read_csv, split
from dispatcher.commands.token import parse_duration


@pytest.mark.parametrize("text, expected", [
    ("user_id,name\nu1,Ann\nu2,Bob\n", ["u1", "u2"]),           # a header naming the column
    ("name,Recipient\nAnn,u1\nBob,u2\n", ["u1", "u2"]),         # found by name, any case
    ("u1,Ann\nu2,Bob\n\n,\nu3\n", ["u1", "u2", "u3"]),           # no header: the first column
    ("\ufeffuser_id\nu1\n", ["u1"]),                             # a UTF-8 BOM from a spreadsheet
    ("", []),
])
def test_recipients_are_read_from_the_named_column_or_the_first(tmp_path: Path, text: str,
                                                                expected: list[str]) -> None:
    path = tmp_path / "users.csv"
    path.write_text(text, encoding="utf-8")
    assert read_csv(path) == expected


def test_a_csv_over_the_bound_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("".join(f"u{i}\n" for i in range(12)))
    with pytest.raises(typer.BadParameter, match="more than 10 recipients \\(line 11\\)"):
        read_csv(path, limit=10)


def test_recipients_are_split_at_ten_thousand() -> None:
    parts = split([f"u{i}" for i in range(20_001)])
    assert [len(p) for p in parts] == [10_000, 10_000, 1]
    assert parts[1][0] == "u10000"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)])
def test_token_lifetimes(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "1y", "-5m", "h", "1.5h"])
def test_a_lifetime_that_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="not a duration"):
        parse_duration(text)
