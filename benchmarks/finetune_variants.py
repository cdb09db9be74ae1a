"""Issue 14, part 2: variants of DWF's fine-tuning regime, paired against the baselines.

    python benchmarks/finetune_variants.py --jobs 2     # writes docs/results-finetune-variants.md

Every run is a run of benchmarks/accuracy_vs_sparsity.py (the same dense checkpoints, bench
recipes, budget and cache), with the variant's recipe overrides on top of DWF's bench recipe:

- momentum 0 (the paper's optimiser): `train.momentum=0`, the learning rate times 10 (the same
  step size as momentum 0.9 at steady state, lr / (1 - m));
- layer init: `factorize.init=layer`, unbalanced factors with the same product, so that small
  pretrained weights move from the first step (docs/factorization.md);
- long settle: `sparsity.ramp_fraction=0.25`, lambda reaches the target in the first quarter of
  the epochs and holds it for three quarters, so that what the cut removes has collapsed;
- layer init + long settle;
- relative layer penalty: `sparsity.layer_penalty=relative`, each layer's decay divided by its
  learning-rate multiplier (benchmarks/finetune_diagnostics.py: with one global lambda, D >= 3
  keeps the output layers nearly dense);
- fine-tune at the training rate: `sparsity.finetune_lr` = `train.lr` instead of 0.01
  (benchmarks/finetune_masks.py: DWF's masks are as good as L1's, the values on them are not,
  and 3 epochs at 0.01 do not repair them).

Each variant of D = 3 and D = 4 is compared seed by seed (paired) with the default DWF of its
depth and with every baseline of docs/results-5seeds.md's runs (run those first), at the high
sparsities where the issue's goal lies.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import accuracy_vs_sparsity as avs  # noqa: E402
from benchmarks.bench_data import pretrain  # noqa: E402
from benchmarks.bench_report import LABELS  # noqa: E402
from benchmarks.paired import paired, shown  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402

DWF = ("dwf3", "dwf4")
BASELINES = ("dwf2", "gmp", "l1")
SPARSITIES = (0.98, 0.99, 0.995)
LR_FACTOR_M0 = 10.0


def variants(model: str, method: str) -> dict[str, list[str]]:
    """name -> overrides of the DWF run of (model, method)."""
    lr = avs.load_run_recipe({"model": model, "method": method, "sparsity": 0.99, "seed": 0,
                              "split": "test",
                              "recipes": str(avs.RECIPES)}).train.lr  # fmt: skip
    return {"default": [],
            "momentum 0": ["train.momentum=0", f"train.lr={LR_FACTOR_M0 * lr:g}"],
            "layer init": ["factorize.init=layer"],
            "long settle": ["sparsity.ramp_fraction=0.25"],
            "layer init + long settle": ["factorize.init=layer", "sparsity.ramp_fraction=0.25"],
            "relative layer penalty": ["sparsity.layer_penalty=relative"],
            "fine-tune at the training rate": [f"sparsity.finetune_lr={lr:g}"]}


def specs_for(models: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    specs = []
    for model in models:
        for method in (*DWF, *BASELINES):
            named = variants(model, method) if method in DWF else {"default": []}
            for name, overrides in named.items():
                for spec in avs.make_specs([model], [method], list(SPARSITIES), seeds, "test",
                                           overrides, avs.RECIPES):  # fmt: skip
                    spec["variant"] = name
                    specs.append(spec)
    return specs


def render(results: list[dict[str, Any]], models: list[str], seeds: list[int],
           command: str) -> str:  # fmt: skip
    acc: dict[tuple[str, float, str, str], dict[int, float]] = {}
    extra: dict[tuple[str, float, str, str], list[dict[str, Any]]] = {}
    failed: dict[tuple[str, float, str, str], int] = {}
    for r in results:
        key = (r["model"], r["sparsity"], r["method"], r["variant"])
        if r.get("accuracy") is None:  # diverged even after the engine's restarts
            failed[key] = failed.get(key, 0) + 1
            continue
        acc.setdefault(key, {})[r["seed"]] = r["accuracy"]
        extra.setdefault(key, []).append(r)
    lines = ["# Fine-tuning regime: variants of DWF, paired against the baselines", "",
             "Issue 14, part 2. Every run is one of `benchmarks/accuracy_vs_sparsity.py` (same "
             "dense checkpoints, bench recipes with learning rates chosen on a validation split, "
             "budget and data order per seed), with the variant's overrides on DWF's bench "
             "recipe (the script's docstring lists them). Cells: mean accuracy over seeds "
             f"{seeds}, then the paired difference in points against each method with a "
             "two-sided 95% Student-t interval over the seeds; **bold** where it excludes "
             "zero. *Cut*: accuracy just before the exact cut minus just after it (what the "
             "cut destroyed), mean over seeds; *under eps*: the share of weights training "
             "left under float32 epsilon when the cut came. *Diverged*: runs whose loss became "
             "non-finite even after the engine's three restarts at halved learning rates.", ""]
    for model in models:
        for sparsity in SPARSITIES:
            lines += [f"## {model} at sparsity {sparsity}", ""]
            base = {b: acc.get((model, sparsity, b, "default"), {}) for b in BASELINES}
            shown_base = ", ".join(f"{LABELS[b]} {_mean(base[b])}" for b in BASELINES)
            lines += [f"Baselines: {shown_base}.", "",
                      "| DWF | variant | accuracy | vs default | " +
                      " | ".join(f"vs {LABELS[b]}" for b in BASELINES) +
                      " | cut | under eps |", "| --- | --- | --- | --- |" +
                      " --- |" * (len(BASELINES) + 2)]  # fmt: skip
            for method in DWF:
                default = acc.get((model, sparsity, method, "default"), {})
                for name in variants(model, method):
                    mine = acc.get((model, sparsity, method, name), {})
                    runs = extra.get((model, sparsity, method, name), [])
                    vs_default = "" if name == "default" else shown(paired(mine, default))
                    lost = failed.get((model, sparsity, method, name), 0)
                    shown_acc = _mean(mine) + (f" ({lost} diverged)" if lost else "")
                    row = [LABELS[method], name, shown_acc, vs_default,
                           *(shown(paired(mine, base[b])) for b in BASELINES),
                           _cut(runs), _eps(runs)]
                    lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines += ["The default and baseline rows are run here too, with the same recipes as "
              "[results-5seeds.md](results-5seeds.md); their figures are the same. Reproduce "
              "(about 40 minutes on 2 cores; `--report-only` rebuilds this page from its runs "
              "file):", "", "```", command, "```", ""]
    return "\n".join(lines)


def _mean(by_seed: dict[int, float]) -> str:
    if not by_seed:
        return "n/a"
    values = [100 * v for v in by_seed.values()]
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.1f}{spread}"


def _cut(runs: list[dict[str, Any]]) -> str:
    drops = [100 * (r["before_cut"] - r["after_cut"]) for r in runs
             if r.get("before_cut") is not None and r.get("after_cut") is not None]
    return f"{statistics.fmean(drops):.1f}" if drops else "n/a"


def _eps(runs: list[dict[str, Any]]) -> str:
    shares = [r["reached_eps"] for r in runs if r.get("reached_eps") is not None]
    return f"{100 * statistics.fmean(shares):.1f}%" if shares else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--dense-epochs", type=int, default=20)
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results-finetune-variants.md")
    p.add_argument("--report-only", action="store_true", help="rebuild the page from its runs")
    args = p.parse_args(argv)
    runs = args.out.with_name(f"{args.out.stem}_runs.json")
    if args.report_only:
        command = "python benchmarks/finetune_variants.py --jobs 2"
        results = json.loads(runs.read_text())
        write_text_atomic(args.out, render(results, args.models, args.seeds, command))
        print(f"wrote {args.out}")
        return 0
    command = "python benchmarks/finetune_variants.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)  # fmt: skip
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    dense = {(m, "test"): str(pretrain(m, "test", cache, args.dense_epochs)) for m in args.models}
    specs = specs_for(args.models, args.seeds)
    for spec in specs:
        spec["key"] = avs.run_key(spec, avs.load_run_recipe(spec),
                                  avs._dense_hash(dense[(spec["model"], "test")]))  # fmt: skip
    variant_of = {s["key"]: s["variant"] for s in specs}
    results = [{**r, "variant": variant_of[r["key"]]}
               for r in avs.execute(specs, dense, cache, args.jobs, None)]  # fmt: skip
    write_text_atomic(args.out, render(results, args.models, args.seeds, command))
    write_text_atomic(runs, json.dumps([avs._published(r) | {"variant": r["variant"]}
                                        for r in results], indent=1) + "\n")  # fmt: skip
    print(f"wrote {args.out} and {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
