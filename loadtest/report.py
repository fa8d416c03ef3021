"""How the benchmarks report: a PNG figure and the three files of a run (their tables:
`unirank.core.markdown`).

Contract: `figure(path, ncols, size)` yields `(fig, axes)` on matplotlib's Agg backend (no display needed)
and on leaving lays the figure out, saves it as a PNG at `path` and closes it, also when the plotting
failed. `save_results(result, out_dir, name, markdown, plot_to)` writes
`<name>-<timestamp>.json`, `.md` (`markdown`) and, given `plot_to`, `.png` (`plot_to(result, path)`),
and records their paths in `result["files"]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def figure(path: Path | str, ncols: int = 1, size: tuple[float, float] = (7.0, 4.5), dpi: int = 110) -> Iterator:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def save_results(
    result: dict, out_dir: Path, name: str, markdown: str, plot_to: Callable[[dict, Path], None] | None = None
) -> dict:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / f"{name}-{stamp}.json", "markdown": out_dir / f"{name}-{stamp}.md"}
    files["json"].write_text(json.dumps(result, indent=2))
    files["markdown"].write_text(markdown)
    if plot_to is not None:
        files["plot"] = out_dir / f"{name}-{stamp}.png"
        plot_to(result, files["plot"])
    result["files"] = {k: str(v) for k, v in files.items()}
    return result
