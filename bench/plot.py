"""PNG charts of stored results (matplotlib is an optional extra: ``pip install 'edgekit[plot]'``).

- ``tg_vs_depth.png``: generation tokens/s against context depth, one line per device, model and KV type;
- ``pp_vs_depth.png``: the same for prompt processing;
- ``tg_vs_size.png``: generation tokens/s at depth 0 against model size, one series per device.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from edgekit.errors import BenchError

__all__ = ["plot"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BenchError("plotting needs matplotlib, which is not installed",
                         "Install it with: pip install 'edgekit[plot]'") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _label(r: dict[str, Any]) -> str:
    from edgekit.device import describe

    dev = describe(r["device"]) if isinstance(r.get("device"), dict) else str(r.get("cpu_info"))
    eng = "" if r.get("engine") == "edgekit" else f" [{r.get('engine')}]"
    return f"{dev} · {r.get('model_type')} · KV {r.get('type_k')}/{r.get('type_v')}{eng}"


def _vs_depth(plt: Any, recs: list[dict[str, Any]], test: str, path: Path) -> bool:
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r.get("test") == test and isinstance(r.get("avg_ts"), (int, float)):
            series[_label(r)][int(r.get("n_depth") or 0)].append(float(r["avg_ts"]))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, points in sorted(series.items()):
        xs = sorted(points)
        ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=label)
    ax.set_xlabel("context depth (tokens)")
    ax.set_ylabel(f"{test} tokens/s")
    ax.set_title(f"{'Generation' if test == 'tg' else 'Prompt processing'} speed vs context depth")
    _save(plt, fig, ax, path)
    return True


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> None:
    """Finish a chart the same way for every plot and write it as PNG."""
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _vs_size(plt: Any, recs: list[dict[str, Any]], path: Path) -> bool:
    from edgekit.device import describe

    series: dict[str, dict[tuple[int, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r.get("test") == "tg" and not r.get("n_depth") and isinstance(r.get("model_size"), int):
            dev = describe(r["device"]) if isinstance(r.get("device"), dict) else str(r.get("cpu_info"))
            series[dev][(r["model_size"], str(r.get("model_type")))].append(float(r["avg_ts"]))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for dev, points in sorted(series.items()):
        keys = sorted(points)
        xs = [size / 2**20 for size, _ in keys]
        ys = [sum(points[k]) / len(points[k]) for k in keys]
        ax.plot(xs, ys, marker="o", linestyle="--", label=dev)
        for (_, mtype), x, y in zip(keys, xs, ys, strict=True):
            ax.annotate(mtype, (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("model size (MiB)")
    ax.set_ylabel("tg tokens/s at depth 0")
    ax.set_title("Generation speed vs model size")
    _save(plt, fig, ax, path)
    return True


def plot(recs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the charts that the records can fill into ``out_dir``; return the written paths."""
    plt = _pyplot()
    if not recs:
        raise BenchError("no benchmark results to plot", "Run edgekit bench first, or relax the filters.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("tg_vs_depth.png", lambda p: _vs_depth(plt, recs, "tg", p)),
                       ("pp_vs_depth.png", lambda p: _vs_depth(plt, recs, "pp", p)),
                       ("tg_vs_size.png", lambda p: _vs_size(plt, recs, p))):
        if draw(out_dir / name):
            written.append(out_dir / name)
    if not written:
        raise BenchError("the results hold no pp or tg tests to plot", "Run edgekit bench with -p/-n tests.")
    return written
