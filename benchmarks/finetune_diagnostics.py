"""Issue 14, part 3: where DWF's fine-tuning runs put their weights, against the baselines.

    python benchmarks/finetune_diagnostics.py   # 3 min: docs/results-finetune-diagnostics.md

For LeNet-300-100 and LeNet-5 at sparsity 0.99, seed 0, each method's bench run
(benchmarks/accuracy_vs_sparsity.py's recipes, budget and dense checkpoint): the sparsity each
layer ends with (the allocation), and for DWF what its training did before the exact cut: the
share of weights it had brought under float32 epsilon and under 0.01 x their layer's RMS, the
largest weight the cut removed (in layer RMS), the accuracy the cut cost, and the per-layer
factor learning-rate multiplier the engine applies (`train.lr_scaling=per_layer`, capped at
`train.max_lr_scale`), which is what makes one `lr` move every layer's typical weight alike.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import accuracy_vs_sparsity as avs  # noqa: E402
from benchmarks.bench_data import pretrain  # noqa: E402
from benchmarks.bench_report import LABELS  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.methods.dwf import lr_scales  # noqa: E402

METHODS = ("dwf2", "dwf3", "dwf4", "gmp", "l1")
SPARSITY = 0.99


def run(model: str, method: str, dense: Path) -> dict[str, Any]:
    recipe, report, _ = avs.compress_bench_run(model, method, SPARSITY, 0, dense)
    state = torch.load(dense, map_location="cpu", weights_only=True)
    rms = {row.name: float(state[row.name].pow(2).mean().sqrt()) for row in report.layers}
    depth = recipe.factorize.depth
    scales = lr_scales(rms, dict.fromkeys(rms, depth), recipe.train.lr_scaling,
                       recipe.train.max_lr_scale) if method.startswith("dwf") else {}  # fmt: skip
    acc, sp = report.accuracy, report.sparsity
    return {"layers": [(r.name, r.weights, r.sparsity, rms[r.name], scales.get(r.name))
                       for r in report.layers],
            "accuracy": acc.compressed_pytorch, "before_cut": acc.before_cut,
            "after_cut": acc.after_cut, "eps": sp.reached_by_training_eps,
            "relative": sp.reached_by_training_relative, "largest": sp.largest_cut_relative,
            "lr": recipe.train.lr}  # fmt: skip


def page(results: dict[tuple[str, str], dict[str, Any]]) -> str:
    lines = ["# Fine-tuning regime: where each method puts its weights", "",
             f"Sparsity {SPARSITY}, seed 0, each method's bench run (the recipes, budget and "
             "dense checkpoint of docs/results.md). `python benchmarks/finetune_diagnostics.py` "
             "writes this page; the docstring says what each figure is.", ""]
    for model in dict.fromkeys(m for m, _ in results):
        lines += [f"## {model}", "", "Sparsity of each layer at the end:", "",
                  "| layer | weights | dense RMS | " + " | ".join(LABELS[m] for m in METHODS) +
                  " |", "| --- | --- | --- |" + " --- |" * len(METHODS)]  # fmt: skip
        first = results[(model, METHODS[0])]["layers"]
        for i, (name, weights, _, rms, _) in enumerate(first):
            cells = [f"{100 * results[(model, m)]['layers'][i][2]:.1f}%" for m in METHODS]
            lines.append(f"| {name} | {weights:,} | {rms:.3f} | " + " | ".join(cells) + " |")
        lines += ["", "| method | lr | accuracy | before cut | after cut | under eps | "
                  "under 0.01 RMS | largest cut (RMS) | lr multiplier per layer |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for m in METHODS:
            r = results[(model, m)]
            mult = ", ".join(f"{s:.0f}" for *_, s in r["layers"] if s is not None) or "–"
            lines.append(
                f"| {LABELS[m]} | {r['lr']:g} | {100 * r['accuracy']:.1f} | "
                f"{_pct(r['before_cut'])} | {_pct(r['after_cut'])} | {_pct(r['eps'])} | "
                f"{_pct(r['relative'])} | {_num(r['largest'])} | {mult} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main() -> int:
    cache = (ROOT / "benchmarks" / "cache").resolve()
    results = {}
    for model in ("lenet300", "lenet5"):
        dense = pretrain(model, "test", cache, 20)
        for method in METHODS:
            results[(model, method)] = run(model, method, dense)
            print(model, method, f"{100 * results[(model, method)]['accuracy']:.1f}", flush=True)
    out = ROOT / "docs" / "results-finetune-diagnostics.md"
    write_text_atomic(out, page(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
