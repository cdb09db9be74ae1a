"""The accuracy-vs-sparsity results: aggregation over seeds, the table, the plot, the verdict."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_data import accuracy, build, splits  # noqa: E402
from dwfc.export.latency import cpu_name  # noqa: E402

LABELS = {
    "dwf2": "DWF D=2", "dwf3": "DWF D=3", "dwf4": "DWF D=4", "gmp": "GMP (cubic)",
    "oneshot": "one-shot magnitude", "random": "random", "l1": "L1 (proximal)",
}  # fmt: skip
DWF_HEADLINE = ("dwf3", "dwf4")
BASELINES = ("gmp", "oneshot", "random", "l1")
PLOT_SUFFIX = "_accuracy_vs_cr.png"  # docs/results.md: docs/results_accuracy_vs_cr.png


@dataclass
class Cell:
    """One (model, method, sparsity) over its seeds."""

    accs: list[float]
    crs: list[float]
    seconds: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    def text(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


@dataclass
class Page:
    table_text: str
    plot: Path


def dense_accuracy(path: str, model: str) -> float:
    """Test accuracy of the saved dense model."""
    net = build(model)
    net.load_state_dict(torch.load(path, weights_only=True))
    return accuracy(net, splits("test")[1])


def aggregate(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float], Cell]:
    cells: dict[tuple[str, str, float], Cell] = {}
    for r in results:
        if r.get("accuracy") is None:
            continue
        cell = cells.setdefault((r["model"], r["method"], r["sparsity"]), Cell([], [], []))
        cell.accs.append(r["accuracy"])
        cell.crs.append(r["compression_ratio"])
        cell.seconds.append(r.get("wall_s") or 0.0)
    return cells


def _axes(specs: Sequence[dict[str, Any]]) -> tuple[list[str], list[str], list[float]]:
    models = list(dict.fromkeys(s["model"] for s in specs))
    methods = list(dict.fromkeys(s["method"] for s in specs))
    return models, methods, sorted({s["sparsity"] for s in specs})


def tables(specs: Sequence[dict[str, Any]], cells: dict[tuple[str, str, float], Cell],
           dense: dict[str, float], markdown: bool) -> str:  # fmt: skip
    """Per model: method x sparsity, mean ± std test accuracy (%) over seeds, with the CR."""
    models, methods, sparsities = _axes(specs)
    out = []
    for model in models:
        head = ["method"] + [f"{s:g} (CR {1 / (1 - s):.0f})" for s in sparsities]
        rows = [[LABELS.get(m, m)] + [
            cells[(model, m, s)].text() + (f" (n={len(cells[(model, m, s)].accs)})"
                                           if len(cells[(model, m, s)].accs) != 3 else "")
            if (model, m, s) in cells else "—" for s in sparsities] for m in methods]  # fmt: skip
        title = f"{model}: test accuracy (%), mean ± std over seeds; dense {100 * dense[model]:.2f}"
        if markdown:
            lines = [f"**{title}**", "", "| " + " | ".join(head) + " |",
                     "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            lines = [title, fmt.format(*head)] + [fmt.format(*r) for r in rows]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot(path: Path, specs: Sequence[dict[str, Any]], cells: dict[tuple[str, str, float], Cell],
         dense: dict[str, float]) -> None:  # fmt: skip
    """Accuracy against compression ratio (log x), one panel per model, one line per method."""
    models, methods, sparsities = _axes(specs)
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method in methods:
            pts = [(1 / (1 - s), cells[(model, method, s)]) for s in sparsities
                   if (model, method, s) in cells]  # fmt: skip
            if not pts:
                continue
            style = "-o" if method.startswith("dwf") else "--s"
            ax.errorbar([p[0] for p in pts], [100 * p[1].mean for p in pts],
                        yerr=[100 * p[1].std for p in pts], fmt=style, capsize=3, markersize=4,
                        label=LABELS.get(method, method), linewidth=1.6 if method in
                        DWF_HEADLINE else 1.1)  # fmt: skip
        ax.axhline(100 * dense[model], color="k", linestyle="--", linewidth=1.2, label="dense")
        floor = [100 * (c.mean - c.std) for (mo, me, _), c in cells.items()
                 if mo == model and me != "random"]  # fmt: skip
        if floor:  # zoom on the contenders; random falls off the bottom at high sparsity
            low = min(floor) - 1.0
            ax.set_ylim(low, max(100 * dense[model], *[
                100 * (c.mean + c.std) for (mo, _, _), c in cells.items() if mo == model]) + 0.5)
        if floor and any(100 * c.mean < low for (mo, me, _), c in cells.items()
                         if mo == model and me == "random"):  # fmt: skip
            ax.text(0.99, 0.01, "random pruning continues below the axis", ha="right",
                    va="bottom", transform=ax.transAxes, fontsize=7, color="0.4")
        crs = [1 / (1 - s) for s in sparsities]
        ax.set_xlim(min(crs) / 1.3, max(crs) * 1.3)
        ax.set_xscale("log")
        ax.set_xticks(crs, [f"{c:.0f}" for c in crs])
        ax.minorticks_off()
        ax.set_xlabel("compression ratio (weights / non-zero weights), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model} on mnist5k (mean ± std over seeds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _best(model: str, s: float, methods: Sequence[str],
          cells: dict[tuple[str, str, float], Cell]) -> tuple[str, Cell] | None:  # fmt: skip
    present = [(m, cells[(model, m, s)]) for m in methods if (model, m, s) in cells]
    return max(present, key=lambda mc: mc[1].mean) if present else None


def verdict(specs: Sequence[dict[str, Any]], cells: dict[tuple[str, str, float], Cell],
            dense: dict[str, float]) -> tuple[str, bool]:  # fmt: skip
    """The goal, checked from the numbers: DWF (D=3/4) vs the best baseline at s >= 0.95."""
    models, methods, sparsities = _axes(specs)
    lines, met = [], True
    for model in models:
        for s in sparsities:
            winner = _best(model, s, methods, cells)
            dwf, base = _best(model, s, DWF_HEADLINE, cells), _best(model, s, BASELINES, cells)
            if winner is None:
                continue
            text = (f"- {model} at {s:g}: best is {LABELS[winner[0]]} "
                    f"({100 * winner[1].mean:.2f}%)")
            if s >= 0.95 and dwf and base:
                margin = 100 * (dwf[1].mean - base[1].mean)
                spread = 100 * (dwf[1].std + base[1].std)
                if margin > spread:
                    how = "ahead by more than the seed spread"
                elif margin > 0:
                    how = "ahead, but within the seed spread"
                elif margin > -spread:
                    how = "**behind**, within the seed spread"
                else:
                    how = "**behind by more than the seed spread**"
                met &= margin > spread
                text += (f"; {LABELS[dwf[0]]} vs the best baseline {LABELS[base[0]]}: "
                         f"{margin:+.2f} points (spread, sum of the two stds: {spread:.2f}): "
                         f"{how}")
            elif s >= 0.95:
                met = False
                text += "; DWF D=3/4 or the baselines did not run here"
            if s == 0.95 and dwf:
                loss = 100 * (dense[model] - dwf[1].mean)
                met &= loss <= 0.5
                text += (f"; loss against dense {loss:+.2f} points "
                         f"({'within' if loss <= 0.5 else '**over**'} the 0.5-point goal)")
            lines.append(text)
        if not any((model, m, s) in cells for m in DWF_HEADLINE for s in sparsities if s >= 0.95):
            met = False
    return "\n".join(lines), met


def cut_table(specs: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> str:
    """Mean test accuracy of DWF right before and after the exact cut, and at the end."""
    models, methods, sparsities = _axes(specs)
    rows = []
    for model in models:
        for method in (m for m in methods if m.startswith("dwf")):
            for s in sparsities:
                rs = [r for r in results if (r["model"], r["method"], r["sparsity"]) ==
                      (model, method, s) and r.get("accuracy") is not None]  # fmt: skip
                if rs:
                    mean = {k: 100 * statistics.fmean(r[k] for r in rs)
                            for k in ("before_cut", "after_cut", "accuracy")}  # fmt: skip
                    rows.append(f"| {model} | {LABELS[method]} | {s:g} | "
                                f"{mean['before_cut']:.2f} | {mean['after_cut']:.2f} | "
                                f"{mean['accuracy']:.2f} |")  # fmt: skip
    if not rows:
        return ""
    return ("Where DWF loses its accuracy: the mean test accuracy right before the exact cut "
            "(what DWF training reached by itself), right after it, and after the masked "
            "fine-tune. A large drop at the cut means the controller did not bring the weights "
            "to the target during training, and the global cut then removed weights that were "
            "still in use.\n\n| model | method | sparsity | before cut | after cut | final |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows))  # fmt: skip


def without_options(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """A command line's words without the given options and their values."""
    kept, skipping = [], False
    for arg in argv:
        if arg in options:
            skipping = True
        elif skipping and not arg.startswith("--"):
            continue
        else:
            skipping = False
            kept.append(arg)
    return kept


def _machine() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} logical CPUs (shared), "
            f"Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def _coverage(specs: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> str:
    done = {(r["model"], r["method"], r["sparsity"], r["seed"]) for r in results
            if r.get("accuracy") is not None}  # fmt: skip
    models, methods, sparsities = _axes(specs)
    lines = []
    for model in models:
        for s in sparsities:
            want = [(model, m, s, sp["seed"]) for sp in specs for m in [sp["method"]]
                    if sp["model"] == model and sp["sparsity"] == s]  # fmt: skip
            have = sum(w in done for w in want)
            lines.append(f"{model} {s:g}: {have}/{len(want)} runs")
    errors = [r for r in results if r.get("accuracy") is None]
    text = "Runs finished: " + "; ".join(lines) + "."
    devices = {m: sorted({r.get("device", "cpu") for r in results if r["model"] == m})
               for m in models}  # fmt: skip
    text += " Devices: " + "; ".join(f"{m} on {', '.join(d) or '—'}" for m, d in
                                     devices.items()) + " (fp32 everywhere)."  # fmt: skip
    if errors:
        text += "\n\nFailed runs: " + "; ".join(
            f"{r['model']} {r['method']} {r['sparsity']} seed {r['seed']}: "
            f"{(str(r.get('error') or 'no error recorded').splitlines() or [''])[0]}"
            for r in errors)  # fmt: skip
    return text


GMP_REFERENCE = {0.95: 94.0, 0.98: 93.2, 0.99: 91.8}  # the LeNet-300-100 reference


def _reference(cells: dict[tuple[str, str, float], Cell]) -> str:
    got = [(s, ref, cells[("lenet300", "gmp", s)]) for s, ref in GMP_REFERENCE.items()
           if ("lenet300", "gmp", s) in cells]  # fmt: skip
    if not got:
        return ""
    return ("Sanity check of the strongest baseline: GMP on LeNet-300-100 here gives "
            + ", ".join(f"{100 * c.mean:.1f}% at {s:g} (reference {ref}%)" for s, ref, c in got)
            + "; the reference is GMP from a 95.0% dense LeNet-300-100 on this split with 30 "
            "fine-tuning epochs, so the baseline here is at least as well tuned.")


def _embedded(folder: Path) -> str:
    """The overhead pages, if written, included here with their headings one level down."""
    parts = []
    for name in ("overhead.md", "overhead-gpu.md"):
        path = folder / name
        if path.is_file():
            text = path.read_text().replace("\n#", "\n##")
            parts.append(("#" + text if text.startswith("#") else text)
                         + f"\n(From [{name}]({name}).)")  # fmt: skip
    return "\n\n".join(parts) or "Not measured yet: run `benchmarks/overhead.py`."


def _edge(entry: dict[str, Any]) -> str:
    """' (lr at the edge of the grid)' when the chosen lr is the grid's smallest or largest."""
    lrs = sorted({float(o.split("=")[1]) for _, c in entry.get("grid", []) for o in c
                  if o.startswith("train.lr=")})  # fmt: skip
    chosen = [float(o.split("=")[1]) for o in entry["chosen"] if o.startswith("train.lr=")]
    if len(lrs) > 1 and chosen and chosen[0] in (lrs[0], lrs[-1]):
        return " (lr at the edge of the grid)"
    return ""


def _search_section(path: Path) -> str:
    if not path.is_file():
        return "No validation search has been run yet: the runs used the default recipes."
    table = json.loads(path.read_text())
    rows = [f"| {key} | {' '.join(v['chosen'])}{_edge(v)} | "
            + (f"{100 * v['validation_accuracy']:.2f} |" if v.get("validation_accuracy")
               is not None else f"not searched: {v.get('from')}'s values"
               + (f", except {' '.join(v['set'])}" if v.get("set") else "") + " |")
            for key, v in table.items()]  # fmt: skip
    return ("Learning rate (`train.lr`) and its cosine decay (`train.min_lr_ratio`, where the "
            "schedule ends) were chosen per model and method on a 500-image validation split "
            "carved out of the 4,000 training images (50 per class), from a dense model "
            "pretrained on the other 3,500; the test set was never used. The grid and every "
            f"validation accuracy are in [{path.name}]({path.name}).\n\n"
            "| model/method | chosen | validation accuracy (%) |\n| --- | --- | --- |\n"
            + "\n".join(rows))  # fmt: skip


def budget_of(recipe: dict[str, Any]) -> dict[str, int]:
    """The training budget a run's resolved recipe gives every method."""
    return {"epochs": recipe["train"]["epochs"],
            "finetune_epochs": recipe["sparsity"]["finetune_epochs"],
            "batch_size": recipe["data"]["batch_size"]}  # fmt: skip


def write_page(out: Path, specs: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
               dense: dict[str, float], command: str, search: Path,
               note: str = "") -> Page:  # fmt: skip
    """docs/results.md (or `out`) with the table, the plot, the verdict and how to rerun."""
    cells = aggregate(results)
    plot_path = out.parent / f"{out.stem}{PLOT_SUFFIX}"
    plot(plot_path, specs, cells, dense)
    text_verdict, met = verdict(specs, cells, dense)
    times = {m: statistics.fmean([t for (mo, me, _), c in cells.items() if me == m
                                  for t in c.seconds] or [0.0])
             for m in dict.fromkeys(s["method"] for s in specs)}  # fmt: skip
    budget = next((r.get("budget") or budget_of(r["recipe"]) for r in results
                   if r.get("budget") or r.get("recipe")), None)  # fmt: skip
    budget_text = (f"{budget['epochs']} training epochs + {budget['finetune_epochs']} masked "
                   f"fine-tuning epochs, batch {budget['batch_size']}" if budget else "n/a")
    page = f"""# Results: accuracy against sparsity

DWF (D = 2, 3, 4) against gradual magnitude pruning (GMP), one-shot magnitude pruning, random
pruning and L1 on the bundled MNIST subset (4,000 train / 1,000 test images). Every run starts
from the same dense checkpoint of its model (trained once, seeded) and has the same budget
({budget_text}; the same data order for a given seed). Accuracy is on the 1,000 test images
after the exact cut to the target sparsity and the masked fine-tune; CR = weights / non-zero
weights over the pruned (Linear and Conv) weights. Baselines: [baselines.md](baselines.md).

![accuracy against compression ratio]({plot_path.name})

{tables(specs, cells, dense, markdown=True)}

Per-seed paired differences of DWF D = 3 and 4 against each method, with 95% intervals:
[results-paired.md](results-paired.md) (`python benchmarks/paired.py`).

Mean wall time per run (one CPU thread, on a shared machine): {", ".join(
    f"{LABELS.get(m, m)} {t:.0f} s" for m, t in times.items())}.

## Verdict

Goal: DWF at D = 3 or 4 more accurate than every baseline at sparsity 0.95 and above, on both
models, by more than the spread over seeds; at 0.95 at most 0.5 points below dense.
**{"Met." if met else "Not met"}**{"" if met else " (details below)."}

{text_verdict}

{_reference(cells)}

{cut_table(specs, results)}

## What ran

{_coverage(specs, results)} {note}

## Tuning

{_search_section(search)}

## Reproduce

```
{command}
```

Generated {dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} on {_machine()}.
Rerunning the command continues from its cache (`--cache`, one JSON file per run, not tracked);
the runs behind this page are in [results_runs.json](results_runs.json), from which `--report-only`
rebuilds it.

# Training overhead, subnormals, file size

{_embedded(out.parent)}
"""  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return Page(tables(specs, cells, dense, markdown=False), plot_path)
