"""How metrics are printed (issue 24, item 4): rates in % with one decimal, as the README writes them, and tables
aligned by display width, so Chinese entity types and predicates line up with Latin ones."""

import re

import torch

from kslm.metrics import SpanF1, format_report
from kslm.report import metrics_line, table, width


def test_display_width_counts_wide_characters_twice():
    assert width("name") == 4 and width("人名") == 4 and width("ＡＢ") == 4 and width("é") == 1
    assert width("e\u0301") == 1  # a combining accent takes no column


def test_a_table_of_chinese_and_latin_labels_lines_up():
    metric = SpanF1(["人名", "地址", "organization", "书名号"], nested=True)
    gold = [[(0, 2, "人名"), (3, 5, "地址"), (6, 9, "organization"), (10, 12, "书名号"), (0, 5, "地址")]]
    pred = [[(0, 2, "人名"), (3, 5, "地址"), (6, 8, "organization")]]
    metric.update(pred, gold)
    lines = format_report(metric.compute(), "kslm: val scores per entity type").splitlines()
    assert lines[0] == "kslm: val scores per entity type (precision, recall, F1 in %)"
    rows = lines[1:]
    assert len({width(r) for r in rows}) == 1, "\n".join(rows)  # every row ends in the same column
    ends = [[width(r[: m.end()]) for m in re.finditer(r"\S+", r)][-4:] for r in rows]
    assert all(e == ends[0] for e in ends), ends  # and so does every number column
    by_label = {r.split()[0]: r.split()[1:] for r in rows[1:]}
    assert by_label["人名"] == ["100.0", "100.0", "100.0", "1"]
    assert by_label["地址"] == ["100.0", "50.0", "66.7", "2"]  # 1 of its 2 gold spans
    assert by_label["organization"] == ["0.0", "0.0", "0.0", "1"]
    micro = rows[[r.split()[0] for r in rows].index("micro")].split()[2:]
    p, r = 2 / 3, 2 / 5
    assert micro == [f"{100 * p:.1f}", f"{100 * r:.1f}", f"{100 * 2 * p * r / (p + r):.1f}", "5"]


def test_metric_lines_give_rates_in_percent_and_the_loss_first():
    line = metrics_line({"val/ppl": torch.tensor(152.53), "val/f1": 0.72004, "val/loss": 5.02741,
                         "val/macro_recall": 0.655})
    assert line == "val/loss 5.027 | val/f1 72.0% | val/macro_recall 65.5% | val/ppl 152.5"


def test_table_right_aligns_all_but_the_first_column():
    assert table(["", "n"], [["长名字", "1"], ["a", "10"]]) == ["         n", "长名字   1", "a       10"]
