"""How kslm prints metrics, in one place: precision, recall and F1 as percentages with one decimal (the README's
units: "72.0"), everything else with 4 significant digits; tables aligned by display width, so that Chinese entity
types and predicates (two columns a character in a terminal) line up. TensorBoard keeps the raw values (fractions).
The standard library only."""

import unicodedata
from typing import Iterable, List, Sequence

RATES = ("precision", "recall", "f1")  # (and macro_*): printed as percentages


def is_rate(key: str) -> bool:
    """Whether a metric (`val/f1`, `test/macro_precision`, `val/recall/PER`) is a rate printed as a percentage."""
    parts = str(key).split("/")
    name = parts[1] if len(parts) > 1 else parts[0]
    return name.removeprefix("macro_") in RATES


def value(key: str, v) -> str:
    """One metric's value as printed: `72.0%` for a rate, `5.027` for a loss, `152.5` for a perplexity."""
    v = float(v)
    return f"{100 * v:.1f}%" if is_rate(key) else f"{v:.4g}"


def metrics_line(metrics: dict) -> str:
    """`val/loss 5.027 | val/f1 72.0% | …`: the loss first, then the others by name."""
    order = sorted(metrics, key=lambda k: (not str(k).endswith("/loss"), str(k)))
    return " | ".join(f"{k} {value(k, metrics[k])}" for k in order)


def width(text: str) -> int:
    """Display width in a terminal: East Asian wide and full-width characters take 2 columns, combining marks 0."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int, right: bool = False) -> str:
    fill = " " * max(0, columns - width(text))
    return fill + text if right else text + fill


def table(header: Sequence[str], rows: Iterable[Sequence[str]], gap: int = 2) -> List[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned, by display width."""
    rows = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(width(r[i]) for r in rows) for i in range(len(header))]
    return [(" " * gap).join(pad(cell, widths[i], right=i > 0) for i, cell in enumerate(r)).rstrip() for r in rows]


def format_report(res: dict, title: str) -> str:
    """The per-label table of a set-F1 result (kslm.metrics): one row per label, then the micro and macro averages
    and, when present, the flat / nested breakdown; precision, recall and F1 in %."""
    def row(name, m, support=""):
        return [str(name), *(f"{100 * float(m[k]):.1f}" for k in RATES), str(support)]

    labels = list((res.get("per_label") or {}).items())
    rows = [row(label, m, m["support"]) for label, m in labels]
    total = sum(m["support"] for _, m in labels) if labels else ""
    rows.append(row("micro avg", res, total))
    if labels:
        rows.append(row("macro avg", {k: res[f"macro_{k}"] for k in RATES}, total))
    rows += [row(cat, m, m["support"]) for cat, m in (res.get("per_category") or {}).items()]
    return "\n".join([f"{title} (precision, recall, F1 in %)", *table(["", *RATES, "support"], rows)])


__all__ = ["format_report", "is_rate", "metrics_line", "pad", "table", "value", "width"]
