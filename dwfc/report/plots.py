"""The report's two PNG plots: per-layer sparsity, and training (accuracy, sparsity, lambda)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dwfc.report.format import num, sci
from dwfc.report.schema import AccuracyInfo, HistoryRowInfo, RunReport, SparsityInfo, as_report

History = Sequence[HistoryRowInfo]

__all__ = ["epochs", "layer_sparsity_figure", "png", "training_figure"]

DPI = 110
_PHASE_LINE = {"color": "0.45", "linestyle": ":", "linewidth": 1.0}
_TARGET_LINE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}


def png(fig: Figure) -> bytes:
    """`fig` rendered as PNG bytes; the figure is cleared afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()
    return buf.getvalue()


def _bars(r: RunReport) -> tuple[list[str], list[float], list[str], str]:
    """(names, values in %, colours, x label) of the per-layer bars: sparsity, or for channel
    runs the share of each layer's output channels removed."""
    if r.structure is not None:
        rows = r.structure.layers
        names = [x.name or f"layer {i}" for i, x in enumerate(rows)]
        values = [100 * (1 - (num(x.kept_out) or 0) / x.out_channels) if x.out_channels else 0.0
                  for x in rows]  # fmt: skip
        return names, values, ["tab:blue"] * len(rows), "output channels removed (%)"
    names = [lay.name or f"layer {i}" for i, lay in enumerate(r.layers)]
    values = [100 * (num(lay.sparsity) or 0.0) for lay in r.layers]
    colors = ["tab:blue" if lay.factorized else "tab:gray" for lay in r.layers]
    return names, values, colors, "sparsity (%)"


def layer_sparsity_figure(report: RunReport | Mapping[str, Any]) -> Figure:
    """Horizontal bars: sparsity (%) per layer, target as a dashed vertical line; channel runs:
    the share of each layer's output channels removed."""
    r = as_report(report)
    names, values, colors, xlabel = _bars(r)
    n = len(names)
    fig = Figure(figsize=(8.0, max(2.8, 0.26 * n + 1.7)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(n))
    ax.barh(ys, values, color=colors, height=0.7)
    ax.set_yticks(ys, names, fontsize=8 if n > 25 else 9)
    if n:
        ax.set_ylim(n - 0.5, -0.5)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no layers", ha="center", va="center", transform=ax.transAxes)
    for y, v in zip(ys, values, strict=True):
        ax.text(min(v, 100) + 1, y, f"{v:.1f}", va="center", fontsize=7, color="0.2",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.8})
    channels = r.structure is not None
    handles: list[Any] = [Patch(color="tab:blue", label="shrunk" if channels else "factorized")]
    if "tab:gray" in colors:
        handles.append(Patch(color="tab:gray", label="not factorized"))
    target = None if channels else num((r.sparsity or SparsityInfo()).target)
    if target is not None:
        handles.append(ax.axvline(100 * target, label=f"target {100 * target:.1f} %",
                                  **_TARGET_LINE))
    ax.set_xlim(0, 109)
    ax.set_xlabel(xlabel)
    ax.set_title("Per-layer channels removed" if channels else "Per-layer sparsity")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def _rows(history: Sequence[HistoryRowInfo | Mapping[str, Any]]) -> list[HistoryRowInfo]:
    return [r if isinstance(r, HistoryRowInfo) else HistoryRowInfo.model_validate(r)
            for r in history]  # fmt: skip


def epochs(history: Sequence[HistoryRowInfo | Mapping[str, Any]]) -> list[float]:
    """x positions: each row's epoch, offset so a phase restarting at epoch 0 still runs on."""
    xs: list[float] = []
    offset, raw = 0.0, 0.0
    for row in _rows(history):
        e = num(row.epoch)
        raw = raw if e is None else e  # a row without an epoch stays where the last one was
        if xs and raw + offset < xs[-1]:  # epochs restarted: continue after the last row
            offset = xs[-1]
        xs.append(raw + offset)
    return xs


def _series(history: History, xs: Sequence[float], key: str,
            scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(x, scale * row.key) for the rows where row.key is a finite number."""
    pts = [(x, scale * v) for x, row in zip(xs, history, strict=True)
           if (v := num(getattr(row, key))) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _mark_phases(axes: Sequence[Axes], history: History, xs: Sequence[float]) -> None:
    """Dotted vertical lines where the phase changes; phase names along the top panel."""
    for i, row in enumerate(history):
        if i and row.phase == history[i - 1].phase:
            continue
        x = xs[i - 1] if i else xs[0]  # a phase starts where the previous row ended
        for ax in axes if i else ():
            ax.axvline(x, **_PHASE_LINE)
        axes[0].text(x, 1.01, f" {row.phase}", transform=axes[0].get_xaxis_transform(),
                     fontsize=8, ha="left", va="bottom", color="0.3")


def _accuracy_panel(ax: Axes, report: RunReport, history: History,
                    xs: Sequence[float]) -> None:
    ex, ey = _series(history, xs, "eval_acc", 100.0)
    if ex:
        ax.plot(ex, ey, "o-", color="tab:blue", markersize=3.5, label="eval accuracy")
    orig = num((report.accuracy or AccuracyInfo()).original)
    if orig is not None:
        ax.axhline(100 * orig, color="tab:green", linestyle="--", linewidth=1.2,
                   label=f"original {100 * orig:.2f} %")
    if not ex and orig is None:
        ax.text(0.5, 0.5, "no accuracy data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def _target(report: RunReport) -> float | None:
    """The share the controller steers to: the sparsity, or for channel runs the MAC share."""
    st = report.structure
    if st is not None:
        speedup = num(st.target_speedup)
        return 1.0 - 1.0 / speedup if speedup else None
    return num((report.sparsity or SparsityInfo()).target)


def _sparsity_curves(report: RunReport) -> list[tuple[str, str, str, float]]:
    """(history field, legend label, colour, line width) of each sparsity curve."""
    s = report.sparsity or SparsityInfo()
    if report.structure is not None:
        return [("sparsity_eps", "MACs of channels under eps", "tab:orange", 1.5),
                ("sparsity_rel", "MACs of channels under the relative threshold", "tab:purple",
                 1.5),
                ("sparsity_ctl", "MACs of channels under the control threshold", "tab:cyan",
                 2.2)]  # fmt: skip
    eps, rel, ctl = sci(s.eps), sci(s.relative_threshold), s.control_threshold
    ctl_s = "0.1" if num(ctl) is None else sci(ctl)  # dwfc's default when a report lacks it
    return [("sparsity_eps", f"|w| < eps ({eps})", "tab:orange", 1.5),
            ("sparsity_rel", f"|w| < {rel} x RMS (relative)", "tab:purple", 1.5),
            ("sparsity_ctl", f"|w| < {ctl_s} x RMS (controlled)", "tab:cyan", 2.2)]


def _sparsity_panel(ax: Axes, report: RunReport, history: History,
                    xs: Sequence[float]) -> Axes | None:
    """Sparsity (%) at each threshold and the target; lambda on a twin log axis (returned)."""
    for key, label, color, width in _sparsity_curves(report):
        sx, sy = _series(history, xs, key, 100.0)
        if sx:
            ax.plot(sx, sy, "-", color=color, linewidth=width, label=label)
    target = _target(report)
    if target is not None:
        ax.axhline(100 * target, label=f"target {100 * target:.1f} %", **_TARGET_LINE)
    ax.set_ylim(-3, 103)
    ax.set_ylabel("MACs removed (%)" if report.structure is not None else "sparsity (%)")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    lx, ly = _series(history, xs, "lam")  # fine-tune rows have lambda None: skipped
    pts = [(x, y) for x, y in zip(lx, ly, strict=True) if y > 0]  # a log axis needs y > 0
    if not pts:
        return None
    lam_ax = ax.twinx()
    lam_ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="0.35", linewidth=1.0,
                alpha=0.8, label="lambda (right axis, log)")
    lam_ax.set_yscale("log")
    lam_ax.set_ylabel("lambda (log scale)")
    return lam_ax


def training_figure(report: RunReport | Mapping[str, Any]) -> Figure:
    """Two stacked panels over epochs: eval accuracy, and sparsity with lambda on a log axis."""
    r = as_report(report)
    history = r.history
    xs = epochs(history)
    fig = Figure(figsize=(8.5, 6.8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.1])
    _accuracy_panel(top, r, history, xs)
    lam_ax = _sparsity_panel(bottom, r, history, xs)
    _mark_phases([top, bottom], history, xs)
    if not history:
        bottom.text(0.5, 0.5, "no training history", ha="center", va="center",
                    transform=bottom.transAxes)
    handles: list[Any] = []
    for ax in (top, bottom, lam_ax):
        if ax is not None:
            handles += ax.get_legend_handles_labels()[0]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8,
                   frameon=False)
    fig.suptitle("Training", fontsize=11)
    return fig
