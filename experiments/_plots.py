"""Figures of the experiments' results: PNG files drawn with matplotlib, the optional extra `pip install -e '.[plots]'`.

Each script defines `figures(payload)`, which yields `(name, Figure)` pairs drawn from one result JSON. The figures
are written as `<json stem>_<name>.png`, atomically (kslm.io). They go to experiments/figures/ for the stored results
in experiments/results/, and beside the JSON for any other result file, unless `--figures DIR` says where.
`--plot [JSON ...]` draws them again from stored JSON and computes nothing; like `--table`, it imports neither torch
nor lightning. Without matplotlib, `--plot` prints one line naming the extra and exits 2, while an experiment run
still finishes and only skips its figures, with one line.

The bytes are reproducible: matplotlib's Agg renderer through `Figure` (no pyplot, no GUI state), a fixed style
and DPI, a 256-colour palette, and no metadata (no version tag) in the PNG. Re-plotting the same JSON with the same
matplotlib, FreeType and Pillow gives the same file.

Nothing here imports matplotlib at import time; `figure()` does, on first use.
"""

import io
import sys
from pathlib import Path

from kslm.io import write_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIGURES = HERE / "figures"
EXTRA = "pip install -e '.[plots]'"
DPI = 100
STYLE = {"axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "lines.linewidth": 1.5, "lines.markersize": 4,
         "svg.hashsalt": "kslm", "path.simplify": True, "font.family": "DejaVu Sans"}


class MissingMatplotlib(ImportError):
    """matplotlib is not installed: the message names the extra that brings it."""


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingMatplotlib(f"figures need matplotlib, which is not installed ({EXTRA})") from exc
    matplotlib.use("Agg")
    matplotlib.rcParams.update(STYLE)
    return matplotlib


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.4):
    """A new Figure of `nrows` × `ncols` panels of about `width` × `height` inches each, and its axes as a flat list."""
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).ravel())


def png(fig) -> bytes:
    """The figure as a 256-colour PNG (a third of the RGBA file's size, and looks the same: a plot has few colours),
    without metadata such as matplotlib's version tag (so another version can write the same file)."""
    import numpy as np  # numpy and Pillow are dependencies of matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)  # the pixels straight from Agg: no PNG written and read back before quantizing
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    out = io.BytesIO()
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def log_xticks(ax, values) -> None:
    """A log x axis labelled at exactly `values` (no minor ticks such as 3×10⁰ between them)."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


def plain_log_y(ax) -> None:
    """A log y axis whose tick labels read 2, 3, 6 rather than 2×10⁰ (for ranges within a decade or two)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(round(v, 6))[0] in "1235" else ""))


def after_step(curve):
    """(step + 1, value) of a TensorBoard series: Lightning logs at the step index, the text counts steps done."""
    return [s + 1 for s, _ in curve], [v for _, v in curve]


def default_folder(json_path) -> Path:
    """experiments/figures/ for a stored result in experiments/results/, else the JSON's own folder."""
    path = Path(json_path).resolve()
    return FIGURES if path.parent == RESULTS else path.parent


def write_figures(payload: dict, json_path, render, folder=None) -> list:
    """render(payload)'s figures as `<json stem>_<name>.png` in `folder` (default: default_folder); their paths."""
    folder = Path(folder) if folder else default_folder(json_path)
    paths = []
    for name, fig in render(payload):
        path = folder / f"{Path(json_path).stem}_{name}.png"
        write_bytes(path, png(fig))
        paths.append(path)
    return paths


def plot_flag(parser, stored) -> None:
    """The experiment scripts' `--plot [JSON ...]` and `--figures DIR` options."""
    names = ", ".join(Path(p).name for p in stored)
    parser.add_argument("--plot", nargs="*", metavar="JSON",
                        help=f"draw the figures of these result files and exit, computing nothing (default: the stored {names}); "
                        f"needs matplotlib ({EXTRA})")
    parser.add_argument("--figures", metavar="DIR", help="folder for the PNG figures (default: experiments/figures/ for "
                        "results in experiments/results/, else the result file's folder)")


def plot_stored(files, stored, render, folder=None) -> None:
    """`--plot`: the figures of every result file named (none named: each of `stored` that exists), one path a line.
    Without matplotlib, or for a file that is missing, not JSON or another script's result: one line and exit 2."""
    paths = [Path(f) for f in files] if files else [Path(p) for p in stored if Path(p).is_file()]
    if not paths:
        print(f"no stored results ({', '.join(str(p) for p in stored) or 'this script keeps none'})")
        return
    import json

    def fail(message: str):
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    for path in paths:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"{path}: not a readable JSON result file ({exc.__class__.__name__}: {exc})")
        try:
            for out in write_figures(payload, path, render, folder):
                print(out)
        except MissingMatplotlib as exc:
            fail(str(exc))
        except (KeyError, TypeError, IndexError) as exc:
            fail(f"{path}: not a result file of this script ({exc.__class__.__name__}: {exc})")


def figures_after_run(payload: dict, json_path, render, folder=None) -> list:
    """At the end of an experiment run: its figures, or one line saying why there are none (no matplotlib, or a
    failure while drawing: the run's results are saved before this, and its table is still printed after)."""
    try:
        paths = write_figures(payload, json_path, render, folder)
    except MissingMatplotlib as exc:
        print(f"figures skipped: {exc}", file=sys.stderr)
        return []
    except Exception as exc:  # the results are saved already: a drawing bug must not end the run here
        print(f"figures failed ({exc.__class__.__name__}: {exc}); the results are saved, `--plot {json_path}` draws them again",
              file=sys.stderr)
        return []
    print("figures: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return paths
