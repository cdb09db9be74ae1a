"""Paired differences of DWF D = 3 and D = 4 against every other method, per cell of
docs/results.md, from its runs file.

    python benchmarks/paired.py   # reads docs/results-5seeds_runs.json, writes results-paired.md

Runs with the same seed start from the same dense checkpoint and see the same data order, so
methods are compared seed by seed: the mean over seeds of (DWF - other) in accuracy points, with
a two-sided 95% Student-t interval over the seeds. A difference counts only where the interval
excludes zero.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_report import LABELS  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402

DWF = ("dwf3", "dwf4")
OTHERS = ("dwf2", "gmp", "oneshot", "l1", "random")
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """DWF minus another method over the seeds both finished (accuracy points by default)."""

    mean: float
    low: float
    high: float
    seeds: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired(a: dict[int, float], b: dict[int, float], scale: float = 100) -> Paired | None:
    """The paired difference scale * (a - b) over the seeds in both (None below two seeds);
    the default scale gives accuracy points."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [scale * (a[s] - b[s]) for s in seeds]
    mean = statistics.fmean(diffs)
    half = student_t.ppf(0.5 + LEVEL / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(
        len(diffs))  # fmt: skip
    return Paired(mean, mean - half, mean + half, len(diffs))


def by_cell(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, float, str], dict[int, float]]:
    """Accuracy by (model, sparsity, method), then by seed."""
    cells: dict[tuple[str, float, str], dict[int, float]] = {}
    for r in runs:
        cells.setdefault((r["model"], r["sparsity"], r["method"]), {})[r["seed"]] = r["accuracy"]
    return cells


def shown(p: Paired | None, ratio: bool = False, digits: int = 1) -> str:
    """`mean [low, high]` to `digits` decimals, bold where the interval excludes zero; with
    `ratio`, a difference of natural logs shown as `exp(mean)x [exp(low), exp(high)]`."""
    if p is None:
        return "n/a"
    if ratio:
        text = f"{math.exp(p.mean):.2f}x [{math.exp(p.low):.2f}, {math.exp(p.high):.2f}]"
    else:
        text = f"{p.mean:+.{digits}f} [{p.low:+.{digits}f}, {p.high:+.{digits}f}]"
    return f"**{text}**" if p.significant else text


def render(runs: Sequence[dict[str, Any]], source: str, command: str, page: str = "results.md",
           note: str = "") -> str:  # fmt: skip
    cells = by_cell(runs)
    keys = sorted({(m, s) for m, s, _ in cells})
    seeds = sorted({r["seed"] for r in runs})
    present = {method for _, _, method in cells}
    others = [o for o in OTHERS if o in present]
    missing = [LABELS[o] for o in OTHERS if o not in present]
    if missing:
        note = f"{' and '.join(missing)} are not in these runs. {note}".strip()
    t = student_t.ppf(0.5 + LEVEL / 2, len(seeds) - 1) if len(seeds) > 1 else math.nan
    lines = ["# Results: paired differences, DWF against each method", "",
             f"From the runs of [{page}]({page}) (`{source}`): accuracy of DWF D = 3 and "
             f"D = 4 minus that of each other method, in points, mean over seeds {seeds} with a "
             f"two-sided {LEVEL:.0%} Student-t interval over those seeds (paired: a seed's runs "
             "share the dense checkpoint and the data order). **Bold**: the interval excludes "
             f"zero. With {len(seeds)} seeds, t = {t:.2f} ({len(seeds) - 1} degrees of "
             f"freedom).{' ' + note if note else ''}", ""]
    wins = {d: {o: [0, 0] for o in others} for d in DWF}  # [ahead, behind] where significant
    for dwf in DWF:
        lines += [f"## {LABELS[dwf]} minus", "",
                  "| model | sparsity | " + " | ".join(LABELS[o] for o in others) + " |",
                  "| --- | --- |" + " --- |" * len(others)]
        for model, sparsity in keys:
            row = []
            for other in others:
                p = paired(cells.get((model, sparsity, dwf), {}),
                           cells.get((model, sparsity, other), {}))  # fmt: skip
                if p is not None and p.significant:
                    wins[dwf][other][0 if p.mean > 0 else 1] += 1
                row.append(shown(p))
            lines.append(f"| {model} | {sparsity} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Count", "", f"Cells (of {len(keys)}) where the interval excludes zero:", ""]
    for dwf in DWF:
        lines.append(f"- {LABELS[dwf]}: " + "; ".join(
            f"{LABELS[o]} ahead in {wins[dwf][o][0]}, behind in {wins[dwf][o][1]}"
            for o in others) + ".")  # fmt: skip
    lines += ["", "Reproduce:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "docs" / "results-5seeds_runs.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results-paired.md")
    p.add_argument("--page", default=None, help="the results page the runs are from")
    p.add_argument("--note", default="", help="a sentence for the page's introduction")
    args = p.parse_args(argv)
    page = args.page or args.runs.name.removesuffix("_runs.json") + ".md"
    runs = json.loads(args.runs.read_text())
    source = args.runs.relative_to(ROOT) if args.runs.is_relative_to(ROOT) else args.runs
    command = "python benchmarks/paired.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = render(runs, str(source), command.strip(), page, args.note)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
