"""Structured DWF (D-Gating) against the channel-pruning baselines: accuracy against the measured
onnxruntime speed-up, on mnist5k, for LeNet-5 and a small residual CNN with BatchNorm.

    python benchmarks/structured.py --search   # learning rates on the validation split
    python benchmarks/structured.py            # 3 seeds x 2x/4x/8x -> docs/results-structured.md
    python benchmarks/structured.py --set structure.min_keep=0.25 --out docs/results-x.md

Every run goes through `dwfc.compress` with `structure.kind=channel` from one dense checkpoint
per model (pretrained once, seeded), with the same budget for every method. Each finished run is
kept as JSON in `--cache` (untracked: a stopped benchmark continues where it stopped), the runs
behind the page in docs/results-structured_runs.json, from which `--report-only` rebuilds the page.
The learning rate of each (model, method) is chosen by `--search` at 4x on a validation split
carved out of the training images (benchmarks/bench_data.py) and kept, with the grid it was chosen
from, in benchmarks/recipes/structured-search.json (a search of some models keeps the others').
`--reuse RUNS_JSON` puts the runs of a page back into the cache, so a new page reruns only the
runs whose recipe changed. Runs are sequential: two torch processes on two cores
slow each other down many times over, and the latency measured in each run needs a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import itertools
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and a source `dwfc` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_data import VALIDATION_SOURCE, pretrain, state_hash  # noqa: E402
from benchmarks.bench_report import _machine, without_options  # noqa: E402
from benchmarks.paired import LEVEL, paired, shown  # noqa: E402
from dwfc._atomic import atomic_path  # noqa: E402
from dwfc.config import Recipe, load_recipe  # noqa: E402
from dwfc.errors import Interrupted  # noqa: E402
from dwfc.export.latency import cpu_name  # noqa: E402
from dwfc.report.schema import RunReport  # noqa: E402
from dwfc.structure.blocks import channel_block  # noqa: E402

# model: (factory, its keyword arguments, structure.round_to, dense pretraining epochs).
# LeNet-5's layers have 6 and 16 channels: rounded to 2 it cannot reach 8x (7.98x at most).
# The residual CNN is ResNetMini at width 48 (691k parameters, 22.9M MACs): at width 16 (2.6M
# MACs) onnxruntime's time is mostly per-operator overhead and hardly falls with the MACs. It
# rounds as dwfc does by default: to the block of output channels onnxruntime computes at once
# on this machine (None: dwfc.structure.blocks.channel_block(), 16 with AVX-512, else 8).
MODELS = {
    "lenet5": ("dwfc.zoo:lenet5", {}, 1, 20),
    "resnet_mini48": ("dwfc.zoo:resnet_mini", {"width": 48}, None, 10),
}
# label: (sparsity.method, factorize.depth); slimming needs BatchNorm (resnet_mini only)
METHODS = {
    "dwf2": ("dwf", 2), "dwf3": ("dwf", 3), "dwf4": ("dwf", 4), "filter_l1": ("filter_l1", 2),
    "group_gmp": ("group_gmp", 2), "group_lasso": ("group_lasso", 2), "slimming": ("slimming", 2),
}  # fmt: skip
LABELS = {"dwf2": "D-Gating D=2", "dwf3": "D-Gating D=3", "dwf4": "D-Gating D=4",
          "filter_l1": "L1 filter pruning", "group_gmp": "gradual group magnitude",
          "group_lasso": "group lasso + magnitude", "slimming": "network slimming"}  # fmt: skip
DWF_HEADLINE = ("dwf3", "dwf4")
SPEEDUPS = (4.0, 2.0, 8.0)  # run in this order: the headline first
SEEDS = (0, 1, 2)
SEARCH_LR = (0.05, 0.1, 0.2, 0.4)
FIRST_GRID = (0.025, 0.05, 0.1)  # the grid of the runs files that do not record theirs
SEARCH_SPEEDUP = 4.0
BUDGET = ["train.epochs=10", "sparsity.finetune_epochs=2"]
QUICK = ["train.epochs=1", "sparsity.finetune_epochs=1"]
FIXED = ["structure.kind=channel", "train.checkpoint=false"]
# 2: the cut gives back what its last step overshoots (dwfc/structure/cut.py); a run records
# the version it was made with, and --reuse takes only this one's
CACHE_VERSION = 2
SEARCH_FILE = ROOT / "benchmarks" / "recipes" / "structured-search.json"


def applies(model: str, method: str) -> bool:
    return method != "slimming" or model.startswith("resnet")


def overrides(spec: dict[str, Any], lr: float | None, budget: list[str]) -> list[str]:
    arch, kwargs, round_to, _ = MODELS[spec["model"]]
    round_to = channel_block() if round_to is None else round_to
    kind, depth = METHODS[spec["method"]]
    found = [f"model.arch={arch}", *(f"model.arch_kwargs.{k}={v}" for k, v in kwargs.items()),
             f"sparsity.method={kind}", f"factorize.depth={depth}",
             f"structure.round_to={round_to}", f"structure.target_speedup={spec['speedup']}",
             f"train.seed={spec['seed']}", *FIXED, *budget]  # fmt: skip
    if spec["split"] == "val":
        found += [f"data.source={VALIDATION_SOURCE}", "export.onnx=false"]
    return found + ([f"train.lr={lr}"] if lr is not None else [])


def run_one(spec: dict[str, Any], dense: Path, lr: float | None, budget: list[str],
            cache: Path) -> dict[str, Any]:  # fmt: skip
    """One `dwfc.compress` run, or its cached result."""
    import dwfc

    recipe = load_recipe("default", overrides(spec, lr, budget))
    path = _cache_path(spec, recipe, dense, cache)
    if path.is_file():
        return json.loads(path.read_text())
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report = dwfc.compress(dense, Path(tmp) / "out", recipe)
        except Interrupted:
            raise  # a stop request (Ctrl-C, SIGTERM) ends the benchmark; nothing is cached
        except dwfc.DwfcError as exc:
            result = {**spec, "lr": recipe.train.lr, "error": str(exc)}
        else:
            result = {**spec, "lr": recipe.train.lr, **_summary(report)}
    result["seconds"] = round(time.monotonic() - start, 1)
    result["machine"] = _machine()
    result["cache_version"] = CACHE_VERSION
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(json.dumps(result, indent=1))
    return result


def _cache_path(spec: dict[str, Any], recipe: Recipe, dense: Path, cache: Path) -> Path:
    key = hashlib.sha256(json.dumps([CACHE_VERSION, _dense_hash(dense),
                                     recipe.model_dump(mode="json")], sort_keys=True).encode())
    return cache / f"{spec['model']}-{spec['method']}-{key.hexdigest()[:16]}.json"


@functools.cache
def _dense_hash(dense: Path) -> str:
    return state_hash(torch.load(dense))


def _summary(report: RunReport) -> dict[str, Any]:
    st, acc, lat = report.structure, report.accuracy, report.latency
    latency = {f"b{r.batch}_t{r.threads}": lat.speedup(r) for r in lat.rows
               if r.model == "compressed"} if lat else {}  # fmt: skip
    return {
        "accuracy": acc.compressed_onnxruntime or acc.compressed_pytorch,
        "original": acc.original, "before_cut": acc.before_cut, "after_cut": acc.after_cut,
        "mac_speedup": st.speedup, "macs": st.macs, "parameters": st.parameters,
        "round_to": st.round_to,
        "dense_parameters": st.dense_parameters, "channels_removed": st.channels_removed,
        "latency_speedup": latency, "cpu": lat.cpu if lat else None,
        "onnxruntime": lat.onnxruntime if lat else None,
    }


def _rounding(model: str, runs: list[dict[str, Any]]) -> str:
    """The structure.round_to of the model's runs, as they recorded it."""
    found = sorted({r["round_to"] for r in runs if r["model"] == model and "round_to" in r})
    return " or ".join(map(str, found)) or "?"


def specs(models: list[str], methods: list[str], speedups: list[float], seeds: list[int],
          split: str = "test") -> list[dict[str, Any]]:  # fmt: skip
    return [{"model": m, "method": k, "speedup": s, "seed": seed, "split": split}
            for s in speedups for seed in seeds for m in models for k in methods
            if applies(m, k)]  # fmt: skip


def dense_path(model: str, split: str, cache: Path) -> Path:
    arch, kwargs, _, epochs = MODELS[model]
    return pretrain(arch, split, cache / "dense", epochs=epochs, **kwargs)


def run_search(args: argparse.Namespace, budget: list[str]) -> dict[str, dict[str, float]]:
    """The learning rate of each (model, method) in SEARCH_LR with the best validation accuracy."""
    chosen: dict[str, dict[str, float]] = {}
    for model in args.models:
        dense = dense_path(model, "val", args.cache)
        for method in (k for k in args.methods if applies(model, k)):
            spec = {"model": model, "method": method, "speedup": SEARCH_SPEEDUP, "seed": 0,
                    "split": "val"}  # fmt: skip
            tried = {lr: run_one(spec, dense, lr, budget, args.cache) for lr in SEARCH_LR}
            for lr, r in tried.items():
                print(f"search {model} {method} lr={lr}: {_pct(r.get('accuracy'))} "
                      f"({r.get('error', '')})", flush=True)
            best = max(tried, key=lambda lr: tried[lr].get("accuracy") or -1.0)
            chosen.setdefault(model, {})[method] = best
    return chosen


def reuse(runs_files: list[Path], args: argparse.Namespace, budget: list[str]) -> int:
    """File the runs of earlier runs files in the cache under the keys their specs and learning
    rates have now (where missing); returns how many. A runs file made with other `--set`
    overrides is refused: its runs are not runs of this benchmark. Runs made on another CPU are
    left out: training is not bit for bit the same across CPUs (the same run on an AMD EPYC and an
    Intel Xeon ended 0.2 points apart), so they are not what this machine would compute; so are
    runs of another CACHE_VERSION (made by other code)."""
    added = 0
    for runs_file in runs_files:
        saved = json.loads(runs_file.read_text())
        if _set_of(saved["command"]) != args.set:
            raise SystemExit(f"{runs_file}: made with --set {_set_of(saved['command'])}, "
                             f"not {args.set}")  # fmt: skip
        for r in saved["runs"]:
            if (r.get("error") or r["model"] not in args.models
                    or r.get("cache_version", 1) != CACHE_VERSION
                    or not r.get("machine", "").startswith(cpu_name() + ",")):  # fmt: skip
                continue
            spec = {k: r[k] for k in ("model", "method", "speedup", "seed", "split")}
            recipe = load_recipe("default", overrides(spec, r["lr"], budget))
            path = _cache_path(spec, recipe, dense_path(r["model"], r["split"], args.cache),
                               args.cache)  # fmt: skip
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(r, indent=1))
                added += 1
    return added


def _set_of(command: str) -> list[str]:
    """The `--set` overrides of a benchmark command line."""
    words = shlex.split(command)
    if "--set" not in words:
        return []
    after = words[words.index("--set") + 1:]
    return list(itertools.takewhile(lambda word: not word.startswith("--"), after))


def _pct(value: float | None) -> str:
    return "failed" if value is None else f"{100 * value:.1f}"


# -- the page ------------------------------------------------------------------------------
def _cells(results: list[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    cells: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["model"], r["method"], r["speedup"]), []).append(r)
    return cells


def _stat(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _acc(runs: list[dict[str, Any]]) -> tuple[float, float] | None:
    values = [100 * r["accuracy"] for r in runs if r.get("accuracy") is not None]
    return _stat(values) if len(values) == len(runs) and values else None


def _latency(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["latency_speedup"].get(key) for r in runs if r.get("latency_speedup")]
    values = [v for v in values if v]
    return statistics.median(values) if values else None


def table(model: str, cells: dict, methods: list[str], speedups: list[float]) -> str:
    rows = ["| method | " + " | ".join(f"{s:g}x: accuracy | MACs reached: ORT b64 1t / all"
                                       for s in speedups)
            + " |", "|---|" + "---|---|" * len(speedups)]  # fmt: skip
    for method in (k for k in methods if applies(model, k)):
        line = [LABELS[method]]
        for s in speedups:
            runs = cells.get((model, method, s), [])
            acc = _acc(runs) if runs else None
            line.append("failed" if runs and acc is None else
                        f"{acc[0]:.2f} ± {acc[1]:.2f} (n={len(runs)})" if acc else "–")
            one, every = _latency(runs, "b64_t1"), _latency(runs, "b64_t0")
            macs = [r["mac_speedup"] for r in runs if r.get("mac_speedup")]
            line.append(f"{statistics.median(macs):.2f}x: {one:.2f}x / {every:.2f}x"
                        if one and every and macs else "–")
        rows.append("| " + " | ".join(line) + " |")
    return "\n".join(rows)


def verdict(model: str, cells: dict, methods: list[str], speedups: list[float],
            dense: float | None) -> list[str]:  # fmt: skip
    lines = []
    baselines = [k for k in methods if not k.startswith("dwf") and applies(model, k)]
    for s in (s for s in speedups if s >= 4):
        for dwf in DWF_HEADLINE:
            mine = _acc(cells.get((model, dwf, s), []))
            if mine is None:
                continue
            rivals = {b: _acc(cells.get((model, b, s), [])) for b in baselines}
            rivals = {b: a for b, a in rivals.items() if a is not None}
            if not rivals:
                continue
            best = max(rivals, key=lambda b: rivals[b][0])
            margin = mine[0] - rivals[best][0]
            spread = max(mine[1], rivals[best][1])
            ok = margin > spread
            lines.append(f"- {s:g}x, {LABELS[dwf]}: {mine[0]:.2f} against the best baseline "
                         f"({LABELS[best]}) {rivals[best][0]:.2f}: {margin:+.2f} points, seed "
                         f"spread {spread:.2f}: **{'met' if ok else 'not met'}**")  # fmt: skip
    for dwf in DWF_HEADLINE:
        two = _acc(cells.get((model, dwf, 2.0), []))
        if two and dense is not None:
            gap = dense - two[0]
            lines.append(f"- 2x, {LABELS[dwf]}: {two[0]:.2f} against dense {dense:.2f} "
                         f"({-gap:+.2f} points; goal at most 0.5 below): "
                         f"**{'met' if gap <= 0.5 else 'not met'}**")  # fmt: skip
    ratios = [r["latency_speedup"]["b64_t0"] / r["mac_speedup"]
              for runs in cells.values() for r in runs if r["model"] == model
              and r.get("latency_speedup", {}).get("b64_t0") and r.get("mac_speedup")]  # fmt: skip
    if ratios:
        low = min(ratios)
        lines.append(f"- measured onnxruntime speed-up (batch 64, all threads) over the MAC "
                     f"speed-up: median {statistics.median(ratios):.2f}, lowest {low:.2f} "
                     f"(goal at least 0.7): **{'met' if low >= 0.7 else 'not met'}**")  # fmt: skip
    return lines


def paired_table(model: str, cells: dict, methods: list[str], speedups: list[float]) -> str:
    """D-Gating D = 3 and 4 minus every other method, seed by seed (runs with the same seed
    start from the same dense checkpoint and see the same data order)."""
    others = [k for k in methods if k not in DWF_HEADLINE and applies(model, k)]
    rows = ["| speed-up | method | " + " | ".join(f"- {LABELS[k]}" for k in others) + " |",
            "|---|---|" + "---|" * len(others)]  # fmt: skip
    for s in sorted(speedups):
        for dwf in (k for k in DWF_HEADLINE if k in methods):
            mine = _by_seed(cells.get((model, dwf, s), []))
            if len(mine) < 2:
                continue
            rows.append(f"| {s:g}x | {LABELS[dwf]} | " + " | ".join(
                shown(paired(mine, _by_seed(cells.get((model, k, s), []))), digits=2)
                for k in others) + " |")  # fmt: skip
    return "\n".join(rows)


def _by_seed(runs: list[dict[str, Any]]) -> dict[int, float]:
    return {r["seed"]: r["accuracy"] for r in runs if r.get("accuracy") is not None}


def _spread(runs: list[dict[str, Any]]) -> tuple[float, float, float] | None:
    """(median, lowest, highest) accuracy in %, or None when a run failed."""
    values = [100 * r["accuracy"] for r in runs if r.get("accuracy") is not None]
    if not values or len(values) < len(runs):
        return None
    return statistics.median(values), min(values), max(values)


def plot(path: Path, models: list[str], cells: dict, methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        medians = []
        for method in (k for k in methods if applies(model, k)):
            points = sorted((_latency(runs, "b64_t0"), _spread(runs))
                            for (m, k, _), runs in cells.items() if m == model and k == method
                            and _latency(runs, "b64_t0") and _spread(runs))  # fmt: skip
            if points:
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                medians += [y[0] for y in ys]
                ax.errorbar(xs, [y[0] for y in ys], yerr=[[y[0] - y[1] for y in ys],
                            [y[2] - y[0] for y in ys]], marker="o", capsize=3,
                            label=LABELS[method],
                            linewidth=2.2 if method in DWF_HEADLINE else 1.2)  # fmt: skip
        if medians:  # a diverged seed's whisker runs off the bottom rather than flatten the rest
            ax.set_ylim(bottom=min(medians) - 1.5)
        ax.set_xlabel("measured onnxruntime speed-up (batch 64, all threads)")
        ax.set_ylabel("test accuracy (%): median, lowest to highest seed")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_page(out: Path, args: argparse.Namespace, results: list[dict[str, Any]],
               search: dict[str, Any], command: str) -> None:  # fmt: skip
    lrs, grids = search["lrs"], search.get("grids", {})
    cells = _cells(results)
    plot_name = out.stem + ".png"
    plot(out.parent / plot_name, args.models, cells, args.methods)
    first = next((r for r in results if r.get("cpu")), {})
    machines = collections.Counter(r.get("machine", "?") for r in results)
    parts = [
        "# Structured DWF: accuracy against measured speed-up",
        "",
        "<!-- Written by benchmarks/structured.py; rebuild with `python benchmarks/structured.py "
        "--report-only`. -->",
        "",
        f"Command: `{command}`. "
        + ("Machine: " if len(machines) == 1 else "Machines (each run measures the original "
           "and the compressed model on its own machine): ")
        + "; ".join(f"{m} ({n} runs)" if len(machines) > 1 else m for m, n in machines.items())
        + f"; onnxruntime {first.get('onnxruntime')}, CPU as onnxruntime's report names it: "
        + ", ".join(sorted({r["cpu"] for r in results if r.get("cpu")})) + ".",
        "",
        "Every run starts from one dense checkpoint per model (pretrained on mnist5k's 4,000 "
        "training images), compresses with `structure.kind=channel` to the MAC speed-up of the "
        f"column (dense MACs / MACs of the physically smaller model), budget `{' '.join(BUDGET)}` "
        + (f"and `{' '.join(args.set)}` " if args.set else "")
        + "for every method, and is scored on the 1,000 test images by the exported, smaller "
        "`model.onnx` in onnxruntime. Accuracy: mean ± standard deviation over the seeds "
        f"({', '.join(map(str, args.seeds))}). ORT: onnxruntime latency of the original over "
        "the compressed model, measured in the same run (interleaved rounds, median; batch 64, "
        "one thread / all threads); the median over the seeds, after the MAC speed-up the "
        "runs reached (median; the cut overshoots the column's by at most one removal step). "
        "Layers keep multiples of "
        + ", ".join(f"{_rounding(m, results)} ({m})" for m in args.models)
        + " channels. Learning rate per (model, method): chosen at "
        f"{SEARCH_SPEEDUP:g}x on a validation split (500 of the training images) from "
        + "; ".join(f"{', '.join(map(str, grids.get(m, FIRST_GRID)))} ({m})"
                    for m in args.models)
        + f": {json.dumps({m: lrs.get(m) for m in args.models})}.",
        "",
        f"![accuracy against measured speed-up]({plot_name})",
        "",
        "The plot: median accuracy over the seeds, bars from the lowest to the highest seed. What "
        "the figures mean, and the diagnostics behind them: "
        "[structured.md](structured.md#measured).",
    ]
    for model in args.models:
        dense = next((100 * r["original"] for r in results
                      if r["model"] == model and r.get("original")), None)  # fmt: skip
        parts += ["", f"## {model}", "",
                  f"Dense accuracy {dense:.2f}%." if dense is not None else "", "",
                  table(model, cells, args.methods, args.speedups), "",
                  "Goals:", "", *verdict(model, cells, args.methods, args.speedups, dense),
                  "", f"Paired, seed by seed: accuracy points of D-Gating minus each other "
                  f"method, mean over the seeds with a {LEVEL:.0%} Student-t interval "
                  "(**bold**: it excludes zero; n/a: fewer than two seeds in both).", "",
                  paired_table(model, cells, args.methods, args.speedups)]
    failed = [r for r in results if r.get("error")]
    if failed:
        parts += ["", "## Failed runs", ""] + [
            f"- {r['model']} {r['method']} {r['speedup']:g}x seed {r['seed']}: {r['error']}"
            for r in failed]  # fmt: skip
    total = sum(r.get("seconds", 0.0) for r in results)
    parts += ["", f"{len(results)} runs, {total / 60:.0f} minutes of compute in all.", ""]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--speedups", nargs="+", type=float, default=list(SPEEDUPS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--search", action="store_true", help="choose the learning rates first")
    p.add_argument("--quick", action="store_true", help="1 + 1 epochs: checks the plumbing")
    p.add_argument("--report-only", action="store_true", help="rebuild the page from the runs")
    p.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="RUNS_JSON",
                   help="put the runs of these runs files back into the cache first")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache" / "structured")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results-structured.md")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="recipe overrides for every run (an ablation: give it its own --out)")
    args = p.parse_args(argv)
    if args.set and args.search:
        p.error("--search chooses the learning rates of the benchmark itself: not with --set")
    return args


def _searched() -> dict[str, Any]:
    """The chosen learning rates, `lrs` (model -> method -> rate), and the grid each model's were
    chosen from, `grids` (model -> rates)."""
    if not SEARCH_FILE.is_file():
        return {"lrs": {}, "grids": {}}
    return json.loads(SEARCH_FILE.read_text())


def _shown(argv: list[str]) -> list[str]:
    """The command line as a page shows it: without `--reuse` and its runs files."""
    return without_options(argv, ["--reuse"])


def run_budget(args: argparse.Namespace) -> list[str]:
    """The overrides every run gets after its own: the budget, then an ablation's `--set`."""
    return [*(QUICK if args.quick else BUDGET), *args.set]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    budget = run_budget(args)
    runs_file = args.out.with_name(args.out.stem + "_runs.json")
    search = _searched()
    if args.reuse:
        print(f"reused {reuse(args.reuse, args, budget)} runs into {args.cache}")
    if args.search:
        chosen = run_search(args, budget)
        search["lrs"].update(chosen)
        search["grids"].update({m: list(SEARCH_LR) for m in chosen})
        if not args.quick:
            with atomic_path(SEARCH_FILE) as tmp:
                tmp.write_text(json.dumps(search, indent=1) + "\n")
        print(json.dumps(chosen))
    lrs = search["lrs"]
    command = shlex.join(["python", "benchmarks/structured.py", *_shown(sys.argv[1:] if argv is None
                                                                        else argv)])
    if args.report_only:
        saved = json.loads(runs_file.read_text())
        write_page(args.out, args, saved["runs"], saved, saved["command"])
        return 0
    results = []
    todo = specs(args.models, args.methods, args.speedups, args.seeds)
    dense = {m: dense_path(m, "test", args.cache) for m in args.models}
    for i, spec in enumerate(todo, 1):
        lr = lrs.get(spec["model"], {}).get(spec["method"])
        r = run_one(spec, dense[spec["model"]], lr, budget, args.cache)
        results.append(r)
        print(f"[{i}/{len(todo)}] {spec['model']} {spec['method']} {spec['speedup']:g}x "
              f"seed {spec['seed']}: {_pct(r.get('accuracy'))}% at "
              f"{r.get('mac_speedup') or 0:.2f}x "
              f"MACs, ORT b64 {r.get('latency_speedup', {}).get('b64_t0') or 0:.2f}x "
              f"({r['seconds']} s) {r.get('error', '')}", flush=True)  # fmt: skip
    if not args.quick:
        with atomic_path(runs_file) as tmp:
            tmp.write_text(json.dumps({"command": command, **search, "runs": results}, indent=1))
    write_page(args.out, args, results, search, command)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
