"""The one table renderer of edgekit bench (records and compare): text, markdown and CSV."""

from __future__ import annotations

import csv
import io

import pytest

from edgekit.bench.tables import render


def test_csv_round_trips_commas_quotes_and_empty_cells():
    rows = [["Pi 5, 8 GB", 'say "hi"', None], ["x", 1.5, 2]]
    text = render(["device", "note", "t/s"], rows, "csv")
    assert list(csv.reader(io.StringIO(text))) == [["device", "note", "t/s"], ["Pi 5, 8 GB", 'say "hi"', ""],
                                                   ["x", "1.5", "2"]]


def test_table_aligns_columns_to_the_widest_cell_and_md_has_a_rule_row():
    table = render(["a", "bb"], [["long", "1"], ["x", "22"]], "table").splitlines()
    assert table == ["a     bb", "long  1", "x     22"]
    assert render(["a", "bb"], [["long", "1"]], "md").splitlines() == ["| a | bb |", "|---|---|", "| long | 1 |"]


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="xml"):
        render(["a"], [], "xml")
