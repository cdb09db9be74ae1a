"""Issue 14, part 3: how DWF's fine-tuning runs move their weights, traced over training.

    python benchmarks/finetune_dynamics.py   # 4 min: docs/results-finetune-dynamics.md

For LeNet-300-100 and LeNet-5 at sparsity 0.99, seed 0, each method's bench run
(benchmarks/accuracy_vs_sparsity.py's recipes, budget and dense checkpoint, as in
finetune_diagnostics.py). For every method: how much of the final kept set the dense model's
global magnitude top-k already was. For DWF, snapshots of the factors over the sparsify phase,
each entry classed by whether the final model keeps it:

- misalignment: 1 - D sum|w|^(2/D) / sum_d sum w_d^2, over the entries of a class. The factors'
  weight decay (lambda / D) sum_d w_d^2 equals the L_{2/D} penalty lambda sum |w|^(2/D) only at
  balance (misalignment 0); it is the share of the decay that is not the sparsity penalty.
- effective rate: how fast the collapsed weight moves per unit gradient. One SGD step of rate
  eta on the factors moves w by eta * sum_d prod_{k != d} w_k^2 times its gradient (first
  order), so the rate on w is lr(step) x the layer's factor-rate multiplier x that sum; the
  baselines train w at lr(step) directly. The median of each class.
- top-k agreement: the share of the final kept weights that are among the k largest |w| at the
  snapshot (k = the number kept, global over the sparsified layers): when the kept set is fixed.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import accuracy_vs_sparsity as avs  # noqa: E402
from benchmarks.bench_data import pretrain  # noqa: E402
from benchmarks.bench_report import LABELS  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.methods.dwf import Dwf  # noqa: E402

METHODS = ("dwf2", "dwf3", "dwf4", "gmp", "l1")
VARIANTS = {"dwf3, layer init": ("dwf3", ["factorize.init=layer"])}  # label: method, overrides
RUNS = {**{m: (m, []) for m in METHODS}, **VARIANTS}
SPARSITY = 0.99
SNAPSHOTS = 8  # evenly spaced over the sparsify phase, plus its first step


class Tracer:
    """Per-entry factor statistics of every factorized weight, at chosen global steps."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, Any]] = []
        self.every = 0

    def record(self, method: Dwf, trainer: Any, step: int) -> None:
        schedule = method.schedule
        if step == 0:
            self.every = max(1, schedule.total // SNAPSHOTS)
        elif step > schedule.total or (step % self.every and step != schedule.total):
            return
        lr = schedule.lr_at(max(0, step - 1))  # the rate of the step just taken
        layers = {}
        with torch.no_grad():
            for fw in method._factorized:
                factors = [f.detach().double().cpu() for f in fw.factors]
                depth = len(factors)
                squares = [f.pow(2) for f in factors]
                w = torch.ones_like(factors[0])
                for f in factors:
                    w = w * f
                others = torch.zeros_like(w)  # sum_d prod_{k != d} w_k^2
                for d in range(depth):
                    prod = torch.ones_like(w)
                    for k in range(depth):
                        if k != d:
                            prod = prod * squares[k]
                    others += prod
                layers[fw.name] = {
                    "w": w.float(), "penalty": (depth * w.abs().pow(2.0 / depth)).float(),
                    "decay": sum(squares).float(),
                    "rate": (lr * method.scales[fw.name] * others).float(),
                }  # fmt: skip
        self.snapshots.append({"step": step, "epoch": step / schedule.steps_per_epoch,
                               "lam": method.lam or 0.0, "lr": lr, "layers": layers})  # fmt: skip


def _topk_masks(weights: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    threshold = torch.topk(flat, k).values[-1]
    return {n: w.abs() >= threshold for n, w in weights.items()}


def _agreement(weights: dict[str, torch.Tensor], kept: dict[str, torch.Tensor]) -> float:
    k = int(sum(int(m.sum()) for m in kept.values()))
    top = _topk_masks(weights, k)
    return sum(int((top[n] & kept[n]).sum()) for n in kept) / max(1, k)


def flipped_share(final: dict[str, torch.Tensor], dense: dict[str, torch.Tensor],
                  names: list[str]) -> float:  # fmt: skip
    """The share of the weights `final` keeps (non-zero) whose sign differs from `dense`'s."""
    kept = {n: final[n] != 0 for n in names}
    flips = sum(int((kept[n] & (final[n].sign() != dense[n].sign())).sum()) for n in names)
    return flips / max(1, sum(int(m.sum()) for m in kept.values()))


def _median(values: list[torch.Tensor]) -> float:
    flat = torch.cat([v.flatten() for v in values])
    return float(flat.median()) if flat.numel() else math.nan


def summarise(snapshot: dict[str, Any], kept: dict[str, torch.Tensor]) -> dict[str, float]:
    layers = snapshot["layers"]
    row: dict[str, float] = {"epoch": snapshot["epoch"], "lam": snapshot["lam"],
                             "lr": snapshot["lr"]}  # fmt: skip
    for cls, select in (("kept", True), ("removed", False)):
        masks = {n: kept[n] if select else ~kept[n] for n in layers}
        penalty = sum(float(layers[n]["penalty"][masks[n]].sum()) for n in layers)
        decay = sum(float(layers[n]["decay"][masks[n]].sum()) for n in layers)
        row[f"misalignment_{cls}"] = 1.0 - penalty / decay if decay > 0 else math.nan
        row[f"rate_{cls}"] = _median([layers[n]["rate"][masks[n]] for n in layers])
    row["agreement"] = _agreement({n: layers[n]["w"] for n in layers}, kept)
    return row


def run(model: str, method: str, overrides: list[str], dense: Path) -> dict[str, Any]:
    tracer = Tracer()
    start, after = Dwf.start, Dwf.after_step

    def traced_start(self: Dwf, trainer: Any) -> None:
        start(self, trainer)
        tracer.record(self, trainer, 0)

    def traced_after(self: Dwf, trainer: Any, step: int) -> None:
        after(self, trainer, step)
        tracer.record(self, trainer, step)

    with (mock.patch.object(Dwf, "start", traced_start),
          mock.patch.object(Dwf, "after_step", traced_after)):  # fmt: skip
        recipe, report, final = avs.compress_bench_run(model, method, SPARSITY, 0, dense,
                                                       overrides)  # fmt: skip
    names = [row.name for row in report.layers]
    kept = {n: final[n] != 0 for n in names}
    state = torch.load(dense, map_location="cpu", weights_only=True)
    return {"accuracy": report.accuracy.compressed_pytorch, "lr": recipe.train.lr,
            "dense_agreement": _agreement({n: state[n] for n in names}, kept),
            "flipped": flipped_share(final, state, names),
            "trace": [summarise(s, kept) for s in tracer.snapshots]}  # fmt: skip


def _f(x: float, digits: int = 3) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}g}"


def _label(run: str) -> str:
    method, _, variant = run.partition(", ")
    return LABELS[method] + (f", {variant}" if variant else "")


def page(results: dict[tuple[str, str], dict[str, Any]], note: str) -> str:
    lines = ["# Fine-tuning regime: how DWF moves its weights over training", "",
             f"Sparsity {SPARSITY}, seed 0, each method's bench run (the recipes, budget and "
             "dense checkpoint of docs/results.md). `python benchmarks/finetune_dynamics.py` "
             "writes this page; its docstring defines each figure. Allocation per layer: "
             "[results-finetune-diagnostics.md](results-finetune-diagnostics.md).", "",
             *([note, ""] if note else [])]  # fmt: skip
    for model in ("lenet300", "lenet5"):
        lines += [f"## {model}", "", "Share of the final kept weights that the dense model's "
                  "global magnitude top-k already was (k = the number kept):", "",
                  "| method | lr | accuracy | kept set = dense top-k | kept weights whose sign "
                  "differs from the dense one |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for label in RUNS:
            r = results[(model, label)]
            lines.append(f"| {_label(label)} | {r['lr']:g} | {100 * r['accuracy']:.1f} | "
                         f"{100 * r['dense_agreement']:.1f}% | {100 * r['flipped']:.2f}% |")
        for label in RUNS:
            trace = results[(model, label)]["trace"]
            if not trace:
                continue
            lines += ["", f"{_label(label)}, over the sparsify phase (before the cut):", "",
                      "| epoch | lambda | lr | misalignment: kept / removed | effective rate on "
                      "w, median: kept / removed | kept set = top-k now |",
                      "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
            for row in trace:
                lines.append(
                    f"| {row['epoch']:.1f} | {_f(row['lam'])} | {_f(row['lr'])} | "
                    f"{_f(row['misalignment_kept'])} / {_f(row['misalignment_removed'])} | "
                    f"{_f(row['rate_kept'])} / {_f(row['rate_removed'])} | "
                    f"{100 * row['agreement']:.1f}% |"
                )
        lines.append("")
    command = shlex.join(["python", "benchmarks/finetune_dynamics.py", *sys.argv[1:]])
    lines += ["Reproduce:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default="", help="a paragraph for the page: what it shows")
    args = parser.parse_args(argv)
    cache = (ROOT / "benchmarks" / "cache").resolve()
    results = {}
    for model in ("lenet300", "lenet5"):
        dense = pretrain(model, "test", cache, 20)
        for label, (method, overrides) in RUNS.items():
            r = results[(model, label)] = run(model, method, overrides, dense)
            print(model, label, f"{100 * r['accuracy']:.1f}",
                  f"dense top-k {100 * r['dense_agreement']:.1f}%",
                  f"flipped {100 * r['flipped']:.2f}%", flush=True)  # fmt: skip
    out = ROOT / "docs" / "results-finetune-dynamics.md"
    write_text_atomic(out, page(results, args.note))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
