"""Formatting helpers of the report: JSON cleaning, numbers, GitHub tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DASH = "—"


def jsonable(obj: Any) -> Any:
    """Plain-JSON copy of `obj`: non-finite floats become None, tuples lists, numpy scalars."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    return str(obj)


def strings(x: Any) -> list[str]:
    """The non-empty strings of a list (anything else: none)."""
    return [str(s) for s in x if str(s).strip()] if isinstance(x, list) else []


def num(x: Any) -> float | None:
    """`x` as a finite float, or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def fmt(x: Any, how: Callable[[float], str]) -> str:
    """`how` applied to `x` when it is a finite number, else "—"."""
    v = num(x)
    return DASH if v is None else how(v)


def pct(x: Any) -> str:
    return fmt(x, lambda v: f"{100 * v:.2f} %")


def count(x: Any) -> str:
    return fmt(x, lambda v: f"{round(v):,}")


def ratio(x: Any) -> str:
    return fmt(x, lambda v: f"{v:.1f}x")


def secs(x: Any) -> str:
    return fmt(x, lambda v: f"{v:.1f} s")


def sci(x: Any) -> str:
    """Compact number: 0.05, 1.5e-4, 2e-6."""
    def one(v: float) -> str:
        if v == 0 or 1e-2 <= abs(v) < 1e5:
            return f"{v:.3g}"
        mant, exp = f"{v:.2e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return fmt(x, one)


def size(x: Any) -> str:
    def one(v: float) -> str:
        for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(v) >= scale:
                return f"{v / scale:.2f} {unit}"
        return f"{int(v)} B"
    return fmt(x, one)


def text(x: Any) -> str:
    if x is None or (isinstance(x, str) and not x.strip()):
        return DASH
    return str(x).replace("|", "\\|").replace("\n", " ")


def code(x: Any) -> str:
    return DASH if x is None else "`" + str(x).replace("|", "\\|") + "`"


def yes_no(x: Any) -> str:
    return DASH if not isinstance(x, bool) else ("yes" if x else "no")


def shape(x: Any) -> str:
    return "×".join(str(d) for d in x) if isinstance(x, list) else text(x)


def sentence(s: str) -> str:
    """`s` with a closing full stop."""
    s = s.strip()
    return s if s.endswith((".", "!", "?")) else s + "."


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """GitHub table; `align` holds one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, sep, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)




def threads(x: Any) -> str:
    """onnxruntime's intra-op thread setting: 0 is its default, one thread per physical core."""
    return "default (physical cores)" if x == 0 else fmt(x, lambda v: f"{round(v)} thread(s)")
