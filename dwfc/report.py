"""Write a compression run's report: report.json, two PNG plots and a GitHub-markdown summary."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dwfc._atomic import write_bytes_atomic, write_text_atomic

__all__ = ["render_markdown", "write_report"]

DASH = "—"
METHOD_NAMES = {"dwf": "Deep Weight Factorization", "gmp": "gradual magnitude pruning",
                "oneshot": "one-shot magnitude pruning", "random": "random pruning",
                "l1": "L1 proximal SGD"}  # fmt: skip


def write_report(out_dir: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write report.json, layer_sparsity.png, training.png and report.md into `out_dir`.

    Returns the written paths in that order. Missing or None keys render as "—".
    """
    from dwfc.plots import layer_sparsity_figure, png, training_figure  # imports matplotlib

    out_dir = Path(out_dir)
    clean = _jsonable(report)
    paths = [out_dir / n for n in ("report.json", "layer_sparsity.png", "training.png")]
    write_text_atomic(paths[0], json.dumps(clean, indent=2, allow_nan=False) + "\n")
    write_bytes_atomic(paths[1], png(layer_sparsity_figure(clean)))
    write_bytes_atomic(paths[2], png(training_figure(clean)))
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


def _section(r: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """r[key] when it is a mapping, else an empty one."""
    value = r.get(key)
    return value if isinstance(value, Mapping) else {}


def _strings(x: Any) -> list[str]:
    """The non-empty strings of a list (anything else: none)."""
    return [str(s) for s in x if str(s).strip()] if isinstance(x, list) else []


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


def _yes_no(x: Any) -> str:
    return DASH if not isinstance(x, bool) else ("yes" if x else "no")


def _shape(x: Any) -> str:
    return "×".join(str(d) for d in x) if isinstance(x, list) else _text(x)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """GitHub table; `align` holds one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, sep, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


# --------------------------------------------------------------------------- markdown


def _method(r: Mapping[str, Any]) -> tuple[str, bool]:
    """The method's name and whether it is DWF (reports from before baselines are DWF)."""
    name = _get(r, "method", "name")
    name = name if isinstance(name, str) and name.strip() else "dwf"
    return name, name == "dwf"


def _method_phrase(r: Mapping[str, Any]) -> str:
    name, dwf = _method(r)
    if dwf:
        return (f"Deep Weight Factorization (`dwf`) at depth D = "
                f"{_text(_get(r, 'method', 'depth'))}")
    return f"the {METHODS_LABEL(name)} baseline (`{name}`)"


def METHODS_LABEL(name: str) -> str:  # noqa: N802
    return METHOD_NAMES.get(name, name)
