"""Write a compression run's report: report.json, two PNG plots and a GitHub-markdown summary."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dwfc._atomic import write_bytes_atomic, write_text_atomic

__all__ = ["render_markdown", "write_report"]

DASH = "—"
DPI = 110
_PHASE_LINE = {"color": "0.45", "linestyle": ":", "linewidth": 1.0}
_TARGET_LINE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}


def write_report(out_dir: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write report.json, layer_sparsity.png, training.png and report.md into `out_dir`.

    Returns the written paths in that order. Missing or None keys render as "—".
    """
    out_dir = Path(out_dir)
    clean = _jsonable(report)
    paths = [out_dir / n for n in ("report.json", "layer_sparsity.png", "training.png")]
    write_text_atomic(paths[0], json.dumps(clean, indent=2, allow_nan=False) + "\n")
    write_bytes_atomic(paths[1], _png(_layer_sparsity_figure(clean)))
    write_bytes_atomic(paths[2], _png(_training_figure(clean)))
    md = out_dir / "report.md"
    write_text_atomic(md, render_markdown(clean))
    return [*paths, md]


# --------------------------------------------------------------------------- helpers


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy of `obj`: non-finite floats become None, tuples lists, numpy scalars."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    return str(obj)


def _get(obj: Any, *keys: str) -> Any:
    """Nested lookup that yields None when any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _num(x: Any) -> float | None:
    """`x` as a finite float, or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _fmt(x: Any, fmt: Callable[[float], str]) -> str:
    """`fmt` applied to `x` when it is a finite number, else "—"."""
    v = _num(x)
    return DASH if v is None else fmt(v)


def _pct(x: Any) -> str:
    return _fmt(x, lambda v: f"{100 * v:.2f} %")


def _int(x: Any) -> str:
    return _fmt(x, lambda v: f"{round(v):,}")


def _ratio(x: Any) -> str:
    return _fmt(x, lambda v: f"{v:.1f}x")


def _secs(x: Any) -> str:
    return _fmt(x, lambda v: f"{v:.1f} s")


def _sci(x: Any) -> str:
    """Compact number: 0.05, 1.5e-4, 2e-6."""
    def fmt(v: float) -> str:
        if v == 0 or 1e-2 <= abs(v) < 1e5:
            return f"{v:.3g}"
        mant, exp = f"{v:.2e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return _fmt(x, fmt)


def _size(x: Any) -> str:
    def fmt(v: float) -> str:
        for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(v) >= scale:
                return f"{v / scale:.2f} {unit}"
        return f"{int(v)} B"
    return _fmt(x, fmt)


def _text(x: Any) -> str:
    if x is None or (isinstance(x, str) and not x.strip()):
        return DASH
    return str(x).replace("|", "\\|").replace("\n", " ")


def _code(x: Any) -> str:
    return DASH if x is None else "`" + str(x).replace("|", "\\|") + "`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """GitHub table; `align` holds one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, sep, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()
    return buf.getvalue()


# --------------------------------------------------------------------------- plots


def _layer_sparsity_figure(report: Mapping[str, Any]) -> Figure:
    """Horizontal bars: sparsity (%) per layer, target as a dashed vertical line."""
    layers = [lay for lay in (report.get("layers") or []) if isinstance(lay, Mapping)]
    n = len(layers)
    fig = Figure(figsize=(8.0, max(2.8, 0.26 * n + 1.7)), layout="constrained")
    ax = fig.add_subplot()
    names = [str(lay.get("name", f"layer {i}")) for i, lay in enumerate(layers)]
    values = [100 * (_num(lay.get("sparsity")) or 0.0) for lay in layers]
    colors = ["tab:blue" if lay.get("factorized") else "tab:gray" for lay in layers]
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
    handles: list[Any] = [Patch(color="tab:blue", label="factorized")]
    if "tab:gray" in colors:
        handles.append(Patch(color="tab:gray", label="not factorized"))
    target = _num(_get(report, "sparsity", "target"))
    if target is not None:
        handles.append(ax.axvline(100 * target, label=f"target {100 * target:.1f} %",
                                  **_TARGET_LINE))
    ax.set_xlim(0, 109)
    ax.set_xlabel("sparsity (%)")
    ax.set_title("Per-layer sparsity")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[float]:
    """x positions: each row's epoch, offset so a phase restarting at epoch 0 still runs on."""
    xs: list[float] = []
    offset, raw = 0.0, 0.0
    for row in history:
        e = _num(row.get("epoch"))
        raw = raw if e is None else e  # a row without an epoch stays where the last one was
        if xs and raw + offset < xs[-1]:  # epochs restarted: continue after the last row
            offset = xs[-1]
        xs.append(raw + offset)
    return xs


def _series(history: Sequence[Mapping[str, Any]], xs: Sequence[float], key: str,
            scale: float = 1.0) -> tuple[list[float], list[float]]:
    pts = [(x, scale * v) for x, row in zip(xs, history, strict=True)
           if (v := _num(row.get(key))) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _mark_phases(axes: Sequence[Axes], history: Sequence[Mapping[str, Any]],
                 xs: Sequence[float]) -> None:
    """Dotted vertical lines where the phase changes; phase names along the top panel."""
    for i, row in enumerate(history):
        if i and row.get("phase") == history[i - 1].get("phase"):
            continue
        x = xs[i - 1] if i else xs[0]  # a phase starts where the previous row ended
        for ax in axes if i else ():
            ax.axvline(x, **_PHASE_LINE)
        axes[0].text(x, 1.01, f" {row.get('phase')}", transform=axes[0].get_xaxis_transform(),
                     fontsize=8, ha="left", va="bottom", color="0.3")


def _accuracy_panel(ax: Axes, report: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                    xs: Sequence[float]) -> None:
    ex, ey = _series(history, xs, "eval_acc", 100.0)
    if ex:
        ax.plot(ex, ey, "o-", color="tab:blue", markersize=3.5, label="eval accuracy")
    orig = _num(_get(report, "accuracy", "original"))
    if orig is not None:
        ax.axhline(100 * orig, color="tab:green", linestyle="--", linewidth=1.2,
                   label=f"original {100 * orig:.2f} %")
    if not ex and orig is None:
        ax.text(0.5, 0.5, "no accuracy data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def _sparsity_panel(ax: Axes, report: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                    xs: Sequence[float]) -> Axes | None:
    """Sparsity (%) at both thresholds and the target; lambda on a twin log axis (returned)."""
    eps = _get(report, "sparsity", "eps")
    rel = _get(report, "sparsity", "relative_threshold")
    for key, label, color in (("sparsity_eps", f"|w| < eps ({_sci(eps)})", "tab:orange"),
                              ("sparsity_rel", f"relative ({_sci(rel)})", "tab:purple")):
        sx, sy = _series(history, xs, key, 100.0)
        if sx:
            ax.plot(sx, sy, "-", color=color, linewidth=1.5, label=f"sparsity {label}")
    target = _num(_get(report, "sparsity", "target"))
    if target is not None:
        ax.axhline(100 * target, label=f"target {100 * target:.1f} %", **_TARGET_LINE)
    ax.set_ylim(-3, 103)
    ax.set_ylabel("sparsity (%)")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    lx, ly = _series(history, xs, "lambda")
    if not lx:
        return None
    lam_ax = ax.twinx()
    lam_ax.plot(lx, ly, "-", color="0.35", linewidth=1.0, alpha=0.8, label="lambda (right axis)")
    if all(v > 0 for v in ly):
        lam_ax.set_yscale("log")
    lam_ax.set_ylabel("lambda")
    return lam_ax


def _training_figure(report: Mapping[str, Any]) -> Figure:
    """Two stacked panels over epochs: eval accuracy, and sparsity with lambda on a log axis."""
    history = [row for row in (report.get("history") or []) if isinstance(row, Mapping)]
    xs = _epochs(history)
    fig = Figure(figsize=(8.5, 6.8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.1])
    _accuracy_panel(top, report, history, xs)
    lam_ax = _sparsity_panel(bottom, report, history, xs)
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


# --------------------------------------------------------------------------- markdown


def _summary(r: Mapping[str, Any]) -> str:
    acc = r.get("accuracy") or {}
    compressed = acc.get("compressed_pytorch") if isinstance(acc, Mapping) else None
    if compressed is None:
        compressed = _get(r, "accuracy", "after_finetune")
    params = _get(r, "model", "parameters")
    return (
        f"Model {_code(_get(r, 'model', 'source'))} (architecture "
        f"{_code(_get(r, 'model', 'arch'))}, {_int(params)} parameters) was compressed with "
        f"Deep Weight Factorization at depth D = {_text(_get(r, 'method', 'depth'))} on "
        f"{_text(r.get('device'))}, using data {_code(_get(r, 'data', 'source'))}. "
        f"Target sparsity {_pct(_get(r, 'sparsity', 'target'))}, achieved "
        f"**{_pct(_get(r, 'sparsity', 'achieved'))}**, compression ratio "
        f"**{_ratio(_get(r, 'sparsity', 'compression_ratio'))}**. Accuracy "
        f"{_pct(_get(r, 'accuracy', 'original'))} → **{_pct(compressed)}** (original → "
        f"compressed). Total time {_secs(_get(r, 'timing', 'total_s'))}."
    )


def _accuracy_section(r: Mapping[str, Any]) -> str:
    stages = [("original", "Original"), ("before_cut", "Before cut"), ("after_cut", "After cut"),
              ("after_finetune", "After masked fine-tune"),
              ("compressed_pytorch", "Compressed (PyTorch)"),
              ("compressed_onnxruntime", "Compressed (onnxruntime)")]
    orig = _num(_get(r, "accuracy", "original"))
    rows = []
    for key, label in stages:
        v = _num(_get(r, "accuracy", key))
        delta = DASH if v is None or orig is None else f"{100 * (v - orig):+.2f} pp"
        delta = "" if key == "original" else delta
        rows.append([label, _pct(v), delta])
    n = _get(r, "data", "eval_samples")
    note = f"Evaluated on {_int(n)} samples." if _num(n) is not None else ""
    return "## Accuracy\n\n" + _table(["Stage", "Accuracy", "Δ vs original"], rows) + (
        f"\n\n{note}" if note else "")


def _sparsity_section(r: Mapping[str, Any]) -> str:
    s = r.get("sparsity") if isinstance(r.get("sparsity"), Mapping) else {}
    fw, tp = s.get("factorized_weights"), s.get("total_parameters")
    rows = [
        ["Target", _pct(s.get("target"))],
        ["Achieved", _pct(s.get("achieved"))],
        [f"Reached by training at \\|w\\| < eps ({_sci(s.get('eps'))})",
         _pct(s.get("reached_by_training_eps"))],
        [f"Reached by training at relative threshold ({_sci(s.get('relative_threshold'))})",
         _pct(s.get("reached_by_training_relative"))],
        ["Factorized / total parameters", f"{_int(fw)} / {_int(tp)}"],
        ["Unfactorized parameters (kept dense)", _int(s.get("unfactorized_parameters"))],
        ["Non-zero weights", _int(s.get("nonzero_weights"))],
        ["Compression ratio", _ratio(s.get("compression_ratio"))],
    ]
    return "## Sparsity\n\n" + _table(["Quantity", "Value"], rows)


def _layers_section(r: Mapping[str, Any]) -> str:
    rows = []
    for lay in r.get("layers") or []:
        if not isinstance(lay, Mapping):
            continue
        shape = lay.get("shape")
        shape_s = "×".join(str(d) for d in shape) if isinstance(shape, list) else _text(shape)
        fact = lay.get("factorized")
        rows.append([_code(lay.get("name")), shape_s, _int(lay.get("weights")),
                     _int(lay.get("nonzero")), _pct(lay.get("sparsity")),
                     DASH if fact is None else ("yes" if fact else "no")])
    if not rows:
        rows.append([DASH] * 6)
    header = ["Layer", "Shape", "Weights", "Non-zeros", "Sparsity", "Factorized"]
    return "## Per layer\n\n" + _table(header, rows, align="llrrrl")


def _method_section(r: Mapping[str, Any]) -> str:
    m = r.get("method") if isinstance(r.get("method"), Mapping) else {}
    d, wd = _num(m.get("depth")), _num(m.get("weight_decay"))
    implied = DASH if d is None or wd is None else _sci(d * wd / 2)
    rows = [
        ["Depth D", _text(m.get("depth"))],
        ["Initialisation", _text(m.get("init"))],
        ["Optimizer", _text(m.get("optimizer"))],
        ["Learning rate", _sci(m.get("lr"))],
        ["LR schedule", _text(m.get("schedule"))],
        ["Final weight decay (wd)", _sci(m.get("weight_decay"))],
        ["Final lambda", f"{_sci(m.get('lambda'))} (D·wd/2 = {implied})"],
        ["Max lambda during training", _sci(m.get("lambda_history_max"))],
    ]
    note = ("Weight decay wd on each of the D factors acts as an L<sub>2/D</sub> penalty "
            "λ·‖w‖<sub>2/D</sub><sup>2/D</sup> on the collapsed weight, with λ = D·wd/2.")
    return "## Method\n\n" + _table(["Setting", "Value"], rows, align="ll") + f"\n\n{note}"


def _files_section(r: Mapping[str, Any]) -> str:
    files = r.get("files") if isinstance(r.get("files"), Mapping) else {}
    dense = _num(files.get("dense_fp32_bytes"))
    rows = [["dense fp32 (reference)", _int(dense), _size(dense), "1.000" if dense else DASH]]
    names = ["model.safetensors", "model.onnx"]
    names += [k for k in files if k not in names and k != "dense_fp32_bytes"]
    for name in names:
        b = _num(files.get(name))
        ratio = DASH
        if b is not None and dense:
            ratio = f"{b / dense:.3f}" + (f" ({dense / b:.1f}x smaller)" if 0 < b < dense else "")
        rows.append([_code(name), _int(b), _size(b), ratio])
    return "## Files\n\n" + _table(["File", "Bytes", "Size", "Ratio to dense fp32"], rows)


def _onnx_section(r: Mapping[str, Any]) -> str:
    o = r.get("onnx") if isinstance(r.get("onnx"), Mapping) else {}
    diff, tol = _num(o.get("max_abs_diff")), _num(o.get("tolerance"))
    within = DASH if diff is None or tol is None else ("yes" if diff <= tol else "**no**")
    rows = [
        ["Max abs diff (onnxruntime vs PyTorch)", _sci(diff)],
        ["Tolerance", _sci(tol)],
        ["Within tolerance", within],
        ["Checker", _text(o.get("checker"))],
        ["Opset", _text(o.get("opset"))],
    ]
    text = "## ONNX check\n\n"
    if not o:
        text += "ONNX export was not run.\n\n"
    return text + _table(["Check", "Value"], rows)


def _timing_section(r: Mapping[str, Any]) -> str:
    t = r.get("timing") if isinstance(r.get("timing"), Mapping) else {}
    total = _num(t.get("total_s"))
    rows = []
    for key, val in t.items():
        if key == "total_s":
            continue
        v = _num(val)
        share = f"{100 * v / total:.1f} %" if v is not None and total else DASH
        rows.append([key.removesuffix("_s"), _secs(v), share])
    rows.append(["**total**", _secs(total), "100.0 %" if total else DASH])
    return "## Timing\n\n" + _table(["Step", "Time", "Share"], rows)


def _recipe_section(r: Mapping[str, Any]) -> str:
    recipe = r.get("recipe")
    if recipe is None:
        return f"## Recipe\n\n{DASH}"
    body = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip()
    return f"## Recipe\n\nResolved recipe:\n\n```yaml\n{body}\n```"


def render_markdown(report: Mapping[str, Any]) -> str:
    """GitHub-markdown report text for a (JSON-clean) report mapping."""
    r = _jsonable(report)
    source = _get(r, "model", "source")
    title = "# dwfc compression report" + (f": {_text(source)}" if source else "")
    plots = ("## Plots\n\n![Per-layer sparsity](layer_sparsity.png)\n\n"
             "![Training: accuracy, sparsity and lambda](training.png)")
    footer = (f"<sub>Generated by dwfc {_text(r.get('dwfc_version'))} at "
              f"{_text(r.get('created'))}.</sub>")
    parts = [title, _summary(r), _accuracy_section(r), _sparsity_section(r), _layers_section(r),
             _method_section(r), _files_section(r), _onnx_section(r), _timing_section(r), plots,
             _recipe_section(r), footer]
    return "\n\n".join(parts) + "\n"
