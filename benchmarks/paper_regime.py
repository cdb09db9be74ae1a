"""The paper's regime: DWF trained from scratch with one fixed lambda per run, swept to trace
accuracy against compression; L1 and gradual magnitude pruning from scratch on the same budget.

    python benchmarks/paper_regime.py --quick            # minutes: the pipeline, coarsely
    python benchmarks/paper_regime.py --jobs 2           # the full sweep, about an hour

Every run starts from a fresh model (seeded): DWF from the variance-matching initialisation with
truncation (`dwfc.factorize_(..., init="varmatch")`), the baselines from PyTorch's default one.
Plain SGD (momentum 0 or 0.9), cosine schedule to zero, batch 128, the same epochs for every
method. DWF: weight decay 2 lambda / D on every factor, nothing else decayed, no controller,
no cut: its sparsity is what training leaves under float32 epsilon. L1: proximal SGD with a
fixed lambda (soft thresholding after each step: exact zeros). GMP: Zhu & Gupta's cubic
schedule over the first 3/4 of the steps to a swept target, masks by global magnitude. Selected
weights: what `dwfc compress` factorizes by default (Linear and Conv weights). The learning
rate of each method is chosen on a 500-image validation split (`choose_lrs`); the table and
fronts use the 1,000 test images. Each run is cached as one JSON file; the runs file next to
the page holds every run (validation ones too), and `--reuse` puts them back into the cache, so
a page can be rendered again from its runs file without training.

The dense reference (`dense`: the same training with no penalty and no mask, its rate chosen on
validation accuracy from GMP's grid) gives the paper's headline measure: per seed, the largest
compression ratio a method reaches while losing at most 1, 2, 5 or 10 points of the dense
model's accuracy.

`--warmup F` departs from the paper on one point: the penalty (DWF's weight decay, L1's
shrinkage) ramps linearly from 0 to lambda over the first share F of the steps, so that it
cannot empty a network that has not yet learned anything (GMP's schedule starts at 0 anyway).

`--cut` adds what `dwfc compress` does after training: the penalised methods' final weights
(DWF's collapsed product, L1's) are also cut by global magnitude to each compression ratio of
CUTS that training alone has not reached, and scored as they are, with no retraining; each cut
is one more point of the run's front. In 60 epochs DWF leaves most of what its penalty has
made negligible above float32 epsilon, so the epsilon count alone understates what it has
found. GMP ends exactly at its swept target and is not cut.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import dwfc  # noqa: E402
from benchmarks.bench_data import accuracy, build, splits  # noqa: E402
from benchmarks.bench_report import without_options  # noqa: E402
from benchmarks.paired import paired, shown  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.config import FactorizeConfig  # noqa: E402
from dwfc.methods.gmp import gmp_sparsity  # noqa: E402
from dwfc.select import plan  # noqa: E402
from dwfc.sparsity import global_magnitude_masks  # noqa: E402

EPS = torch.finfo(torch.float32).eps
VERSION = 1  # part of every cache key: bump when a run's meaning changes
METHODS = ("dwf2", "dwf3", "dwf4", "l1", "gmp", "dense")
DWF_LAMBDAS = [2e-3 * 2 ** (k / 2) for k in range(10)]  # 2e-3 .. 4.5e-2: CR 1 to collapse
LAMBDAS = {"dwf2": DWF_LAMBDAS, "dwf3": DWF_LAMBDAS, "dwf4": DWF_LAMBDAS,
           "l1": [3e-3 * 2**k for k in range(9)]}  # fmt: skip
TARGETS = [0.9, 0.95, 0.98, 0.99, 0.995, 0.997, 0.999]  # GMP
LRS = {"dwf2": [0.05, 0.1, 0.2], "dwf3": [0.1, 0.2, 0.4], "dwf4": [0.1, 0.2, 0.4],
       "l1": [0.02, 0.05, 0.1], "gmp": [0.02, 0.05, 0.1]}  # at momentum 0.9; see _grid
LRS["dense"] = LRS["gmp"]
LOSSES = (1, 2, 5, 10)  # accuracy points below dense: the paper's headline measure uses 10
OUTPUTS = ("diverged", "accuracy", "sparsity", "cr", "cut_accuracy")  # what run() adds to its spec
MOMENTUM_0_SCALE = 4
CRS = (100, 300, 1000)
CUTS = (10, 30, 100, 300, 1000, 3000)  # --cut: the compression ratios trained weights are cut to
DEEP, SHALLOW = ("dwf3", "dwf4"), ("dwf2", "l1", "gmp")
MAX_PLOTTED_CR = 5000


def _key(spec: dict[str, Any]) -> str:
    text = json.dumps({**spec, "v": VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _selected(model: torch.nn.Module) -> list[str]:
    return [p.name for p in plan(model, FactorizeConfig())]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run from scratch; returns its accuracy and sparsity."""
    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    train, test = splits(spec["split"])
    model = build(spec["model"])
    names = _selected(model)
    method = spec["method"]
    depth = int(method[3:]) if method.startswith("dwf") else 0
    decay = 2 * spec["lam"] / depth if depth else 0.0  # on every factor: lambda's penalty
    if depth:
        dwfc.factorize_(model, depth=depth, init="varmatch",
                        generator=torch.Generator().manual_seed(spec["seed"]))  # fmt: skip
        dwfc.fuse_(model)
        factors = {id(f) for fw in dwfc.factorized_weights(model) for f in fw.factors}
        groups = [{"params": [p for p in model.parameters() if id(p) in factors],
                   "weight_decay": decay},
                  {"params": [p for p in model.parameters() if id(p) not in factors],
                   "weight_decay": 0.0}]  # fmt: skip
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=spec["lr"], momentum=spec["momentum"])
    loader = DataLoader(train, batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(spec["seed"]))  # fmt: skip
    total = spec["epochs"] * len(loader)
    weights = {n: model.get_parameter(n) for n in names} if not depth else {}
    masks: dict[str, torch.Tensor] = {}
    step = 0
    warmup = spec.get("warmup", 0.0) * total  # steps over which the penalty ramps up from 0
    torch.set_flush_denormal(True)
    for _ in range(spec["epochs"]):
        model.train()
        for x, y in loader:
            strength = min(1.0, step / warmup) if warmup else 1.0
            for group in opt.param_groups:
                group["lr"] = spec["lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
            if depth:
                opt.param_groups[0]["weight_decay"] = strength * decay
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if not math.isfinite(float(loss.detach())):
                return {**spec, "diverged": True, "accuracy": 0.1, "sparsity": 0.0, "cr": 1.0}
            loss.backward()
            opt.step()
            step += 1
            with torch.no_grad():
                if method == "l1":  # proximal step of lambda * sum |w| at the current rate
                    shrink = opt.param_groups[0]["lr"] * strength * spec["lam"]
                    for w in weights.values():
                        w.copy_(torch.sign(w) * (w.abs() - shrink).clamp_min(0))
                elif method == "gmp" and (step % 10 == 0 or step == total):
                    target = gmp_sparsity(step, spec["target"], int(0.75 * total))
                    masks = global_magnitude_masks({n: w.detach() for n, w in weights.items()},
                                                   target)  # fmt: skip
                if masks:
                    for n, w in weights.items():
                        w.mul_(masks[n])
    if depth:
        dwfc.collapse_(model)
    final = [model.get_parameter(n).detach() for n in names]
    n_all = sum(w.numel() for w in final)
    zeros = sum(int((w.abs() < EPS).sum()) for w in final)
    with torch.no_grad():  # what is under eps is zero in the deployed model
        for n in names:
            w = model.get_parameter(n)
            w.mul_(w.abs() >= EPS)
    cr = n_all / max(n_all - zeros, 1)
    cuts = {"cut_accuracy": _cut_accuracy(model, names, test, cr)} if spec.get("cut") else {}
    acc = accuracy(model, test)
    return {**spec, "diverged": False, "accuracy": acc, "sparsity": zeros / n_all, "cr": cr,
            **cuts}  # fmt: skip


def _cut_accuracy(model: torch.nn.Module, names: list[str], test: Any,
                  reached: float) -> dict[str, float]:  # fmt: skip
    """Test accuracy of the weights cut by global magnitude to each CR of CUTS above `reached`,
    no retraining; the weights are left as they were."""
    weights = {n: model.get_parameter(n) for n in names}
    kept = {n: w.detach().clone() for n, w in weights.items()}
    scores = {}
    for cr in (c for c in CUTS if c > reached):
        masks = global_magnitude_masks({n: w.detach() for n, w in weights.items()}, 1 - 1 / cr)
        with torch.no_grad():
            for n, w in weights.items():
                w.mul_(masks[n])
        scores[str(cr)] = accuracy(model, test)
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(kept[n])
    return scores


def expand(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs and, after each run with cuts, one point per cut (`cut_to` its CR)."""
    points = []
    for r in results:
        points.append(r)
        for cr, acc in r.get("cut_accuracy", {}).items():
            points.append({**r, "cr": float(cr), "accuracy": acc, "sparsity": 1 - 1 / float(cr),
                           "cut_to": float(cr)})  # fmt: skip
    return points


def _path(spec: dict[str, Any], cache: Path) -> Path:
    return cache / f"{_key(spec)}.json"


def _cached(spec: dict[str, Any], cache: Path) -> dict[str, Any]:
    path = _path(spec, cache)
    if path.is_file():
        return json.loads(path.read_text())
    result = run(spec)
    write_text_atomic(path, json.dumps(result, sort_keys=True))
    return result


def execute(specs: Sequence[dict[str, Any]], cache: Path, jobs: int) -> list[dict[str, Any]]:
    cache.mkdir(parents=True, exist_ok=True)
    if jobs <= 1:
        return [_cached(s, cache) for s in specs]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_cached, specs, [cache] * len(specs)))


def reuse(runs_files: Sequence[Path], cache: Path) -> int:
    """Put the runs of earlier runs files into the cache (where missing); returns how many."""
    cache.mkdir(parents=True, exist_ok=True)
    added = 0
    for runs_file in runs_files:
        for r in json.loads(runs_file.read_text()):
            path = _path({k: v for k, v in r.items() if k not in OUTPUTS}, cache)
            if not path.is_file():
                write_text_atomic(path, json.dumps(r, sort_keys=True))
                added += 1
    return added


def _sweep(method: str) -> list[dict[str, float]]:
    if method == "dense":
        return [{}]
    return [{"target": t} for t in TARGETS] if method == "gmp" else \
        [{"lam": v} for v in LAMBDAS[method]]  # fmt: skip


def _warmup(method: str, args: argparse.Namespace) -> dict[str, float]:
    """The spec's warm-up key: only for the penalised methods, and only when asked for (the
    cache keys of fixed-lambda runs stay what they were)."""
    return {"warmup": args.warmup} if args.warmup and method != "gmp" else {}


def _cut(method: str, args: argparse.Namespace) -> dict[str, bool]:
    """The spec's cut key: only for the penalised methods, and only with --cut."""
    return {"cut": True} if args.cut and method not in ("gmp", "dense") else {}


def _score(points: list[tuple[float, float]]) -> float:
    """How good a front is: its best accuracy at CR >= 10, 100 and 1000 (chance where none)."""
    return sum(best_at(points, c) or 0.1 for c in (10, *CRS[::2]))


def _grid(method: str, momentum: float) -> list[float]:
    """The rates searched: LRS at momentum 0.9; four times those without momentum (where the
    same effective step would be ten times: that diverged in a first run)."""
    return LRS[method] if momentum else [round(MOMENTUM_0_SCALE * lr, 6) for lr in LRS[method]]


def choose_lrs(args: argparse.Namespace, cache: Path
               ) -> tuple[dict[tuple[str, str, float], float], list[dict[str, Any]]]:  # fmt: skip
    """Per (model, method, momentum): the rate whose validation front (seed 0, three points of
    the sweep) scores best (dense: the most accurate), with --stable among the rates at which
    no validation run diverged or ended with every weight under eps (all rates if none is);
    and the validation runs."""
    specs = []
    for model in args.models:
        for method in args.methods:
            sweep = _sweep(method)
            points = [sweep[i] for i in sorted({len(sweep) // 4, len(sweep) // 2,
                                                3 * len(sweep) // 4})]  # fmt: skip
            specs += [{"model": model, "method": method, "momentum": momentum, "lr": lr,
                       "seed": 0, "epochs": args.epochs, "split": "val", **point,
                       **_warmup(method, args), **_cut(method, args)}
                      for momentum in args.momenta for lr in _grid(method, momentum)
                      for point in points]  # fmt: skip
    results = execute(specs, cache, args.jobs)
    points = expand(results)
    chosen = {}
    for model in args.models:
        for method in args.methods:
            for momentum in args.momenta:
                score = _score if method != "dense" else (lambda pts: max(a for _, a in pts))
                at = {lr: [r for r in points if (r["model"], r["method"], r["momentum"], r["lr"])
                           == (model, method, momentum, lr)]
                      for lr in _grid(method, momentum)}  # fmt: skip
                scores = {lr: score([(r["cr"], r["accuracy"]) for r in rs])
                          for lr, rs in at.items()}  # fmt: skip
                if args.stable:  # a cut point keeps its run's `diverged` and is never empty
                    scores = {lr: scores[lr] for lr, rs in at.items() if not any(
                        r["diverged"] or r["sparsity"] == 1.0 for r in rs)} or scores
                chosen[(model, method, momentum)] = max(scores, key=scores.__getitem__)
    return chosen, results


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto front of (CR, accuracy) points: no other point has more of both."""
    kept, best = [], -1.0
    for cr, acc in sorted(points, key=lambda p: (-p[0], -p[1])):
        if acc > best:
            kept.append((cr, acc))
            best = acc
    return sorted(kept)


def best_at(points: list[tuple[float, float]], cr: float) -> float | None:
    """The best accuracy among points of at least `cr`."""
    accs = [a for c, a in points if c >= cr]
    return max(accs) if accs else None


def render(results: list[dict[str, Any]], lrs: dict[Any, float], args: argparse.Namespace,
           command: str, plot_name: str) -> str:  # fmt: skip
    runs, results = results, expand(results)  # the tables read every cut as a point
    regime = (f"lambda ramped up over the first {args.warmup:.0%} of the steps" if args.warmup
              else "fixed lambda")
    cut = ("then cut by global magnitude to each CR, no retraining" if args.cut
           else "no cut")
    lines = [f"# Results: the paper's regime (from scratch, {regime}, {cut})", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"Budget: {args.epochs} epochs, seeds {args.seeds}, momentum {args.momenta}, "
             f"models {args.models}. Learning rates chosen: " + ", ".join(
                 f"{m} {me} m={mo}: {lr}" for (m, me, mo), lr in sorted(lrs.items())) + ".",
             "", f"![accuracy against compression ratio]({plot_name})", "",
             f"(Fronts over the mean of the seeds of each setting, up to CR {MAX_PLOTTED_CR}; "
             "beyond, runs had lost practically every weight and score chance.)", "",
             "Best test accuracy (%) of any run (of any seed: mean over seeds per setting) "
             "reaching at least the compression ratio" + (" (a run's cuts count as settings of "
             "their own)" if args.cut else "") + ":", "",
             "| model | momentum | method | " + " | ".join(f"CR >= {c}" for c in CRS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in CRS) + " |"]  # fmt: skip
    for model in args.models:
        for momentum in args.momenta:
            for method in _compressing(args.methods):
                points = _points(results, model, method, momentum)
                cells = [best_at(points, c) for c in CRS]
                lines.append(f"| {model} | {momentum} | {method} | " + " | ".join(
                    "–" if a is None else f"{100 * a:.1f}" for a in cells) + " |")  # fmt: skip
    deeps = [d for d in DEEP if d in args.methods]  # every baseline counts, run or not
    lines += ["", "## Paired, seed by seed", "",
              "Per seed, the best test accuracy a method reaches at or above the compression "
              "ratio (10% where it reaches none); the difference DWF minus the other method in "
              "points, mean over the seeds with a 95% Student-t interval (with "
              f"{len(args.seeds)} seeds, t = {student_t.ppf(0.975, len(args.seeds) - 1):.2f})."
              " **Bold**: the interval excludes zero.", "",
              "| model | momentum | CR | "
              + " | ".join(f"{d} - {o}" for d in deeps for o in SHALLOW) + " |",
              "| --- | --- | --- |" + " --- |" * (len(deeps) * len(SHALLOW))]  # fmt: skip
    met = {}
    for model in args.models:
        for momentum in args.momenta:
            ahead = dict.fromkeys(deeps, True)
            for cr in CRS:
                row = []
                for deep in deeps:
                    for other in SHALLOW:
                        p = paired(_seed_best(results, model, deep, momentum, cr),
                                   _seed_best(results, model, other, momentum, cr))  # fmt: skip
                        ahead[deep] &= p is not None and p.low > 0
                        row.append(shown(p))
                lines.append(f"| {model} | {momentum} | {cr} | " + " | ".join(row) + " |")
            met[(model, momentum)] = [d for d, ok in ahead.items() if ok]
    regimes = [mo for mo in args.momenta if all(met[(m, mo)] for m in args.models)]
    lines += ["", "Goal (issue 14): DWF D = 3 or 4 ahead of D = 2 and of every baseline at CR "
              ">= 100, 300 and 1000 on both models, by more than the paired interval: "
              + (f"**met** at momentum {regimes}." if regimes else "**not met**: " + "; ".join(
                  f"{m} momentum {mo}: " + (", ".join(met[(m, mo)]) or "neither D")
                  + " ahead everywhere" for m in args.models for mo in args.momenta) + ".")]
    diverged = [r for r in runs if r.get("diverged")]
    emptied = {me: sum(1 for m in args.models for mo in args.momenta
                       for r in _test_runs(runs, m, me, mo) if r["sparsity"] == 1.0)
               for me in _compressing(args.methods)}  # fmt: skip
    lines += ["", f"Runs: {len(runs)}, diverged: {len(diverged)}. Test runs that ended with "
              "every selected weight under eps (chance accuracy), per method: "
              + ", ".join(f"{me} {n}" for me, n in emptied.items()) + "."]
    if "dense" in args.methods:
        lines += ["", *_headline(results, args)]
    if args.note:
        lines += ["", args.note]
    lines += ["", "Reproduce:", "", "```", command, "```", "",
              f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
              f"torch {torch.__version__}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _compressing(methods: Sequence[str]) -> list[str]:
    return [m for m in methods if m != "dense"]


def cr_within(results: list[dict[str, Any]], model: str, method: str, momentum: float,
              loss: float) -> dict[int, float]:  # fmt: skip
    """Per seed with a dense run: the largest CR among `method`'s test runs of that seed whose
    accuracy is at most `loss` points below the dense run's (1.0, the dense model, where none)."""
    dense = {r["seed"]: r["accuracy"] for r in _test_runs(results, model, "dense", momentum)}
    best = dict.fromkeys(dense, 1.0)
    for r in _test_runs(results, model, method, momentum):
        if r["seed"] in dense and r["accuracy"] >= dense[r["seed"]] - loss / 100:
            best[r["seed"]] = max(best[r["seed"]], r["cr"])
    return best


def _dense_accuracy(results: list[dict[str, Any]], model: str, momentum: float) -> float | None:
    """The dense reference's test accuracy, mean over seeds (None without dense runs)."""
    runs = _test_runs(results, model, "dense", momentum)
    return statistics.fmean(r["accuracy"] for r in runs) if runs else None


def _headline(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The paper's measure: compression reached within a given loss of dense accuracy."""
    methods = _compressing(args.methods)
    dense = {(m, mo): _dense_accuracy(results, m, mo) for m in args.models for mo in args.momenta}
    within = {(m, mo, me, d): cr_within(results, m, me, mo, d) for m in args.models
              for mo in args.momenta for me in methods for d in LOSSES}  # fmt: skip
    lines = ["## Compression within a given accuracy loss (the paper's headline measure)", "",
             "Per seed, the largest compression ratio of any run of the method whose test "
             "accuracy is at most 1, 2, 5 or 10 points below the dense reference of the same "
             "seed (CR 1, the dense model, where no run is); geometric mean over the seeds. "
             "Dense reference (mean over seeds): " + ", ".join(
                 f"{m} m={mo} {100 * acc:.1f}%" for (m, mo), acc in dense.items()) + ".", "",
             "| model | momentum | method | " + " | ".join(f"within {d}" for d in LOSSES) + " |",
             "| --- | --- | --- |" + " --- |" * len(LOSSES)]  # fmt: skip
    for model in args.models:
        for momentum in args.momenta:
            for method in methods:
                cells = [within[(model, momentum, method, d)] for d in LOSSES]
                lines.append(f"| {model} | {momentum} | {method} | " + " | ".join(
                    f"{statistics.geometric_mean(c.values()):.0f}" if c else "–"
                    for c in cells) + " |")  # fmt: skip
    others = [o for o in SHALLOW if o in methods]
    lines += ["", "Paired, seed by seed: the ratio of the two compression ratios, geometric mean "
              "over the seeds with a 95% Student-t interval on its logarithm. **Bold**: the "
              "interval excludes 1.", "",
              "| model | momentum | within | " + " | ".join(
                  f"{d} / {o}" for d in DEEP if d in methods for o in others) + " |",
              "| --- | --- | --- |" + " --- |" * (len(others) * sum(d in methods for d in DEEP))]
    for model in args.models:
        for momentum in args.momenta:
            for loss in LOSSES:
                logs = {m: {s: math.log(c) for s, c in within[(model, momentum, m, loss)].items()}
                        for m in methods}  # fmt: skip
                lines.append(f"| {model} | {momentum} | {loss} | " + " | ".join(
                    shown(paired(logs[d], logs[o], scale=1), ratio=True)
                    for d in DEEP if d in methods for o in others) + " |")  # fmt: skip
    return lines


def _test_runs(results: list[dict[str, Any]], model: str, method: str,
               momentum: float) -> list[dict[str, Any]]:  # fmt: skip
    return [r for r in results if (r["model"], r["method"], r["momentum"], r["split"])
            == (model, method, momentum, "test")]  # fmt: skip


def _points(results: list[dict[str, Any]], model: str, method: str,
            momentum: float) -> list[tuple[float, float]]:  # fmt: skip
    """(mean CR, mean accuracy) over seeds of each swept setting."""
    by_setting: dict[float, list[dict[str, Any]]] = {}
    for r in _test_runs(results, model, method, momentum):
        by_setting.setdefault((r.get("lam", r.get("target")), r.get("cut_to")), []).append(r)
    return [(sum(r["cr"] for r in rs) / len(rs), sum(r["accuracy"] for r in rs) / len(rs))
            for rs in by_setting.values()]  # fmt: skip


def _seed_best(results: list[dict[str, Any]], model: str, method: str, momentum: float,
               cr: float) -> dict[int, float]:  # fmt: skip
    """Per seed: the best test accuracy of `method` at CR >= `cr` (chance, 0.1, where none)."""
    best: dict[int, float] = {}
    for r in _test_runs(results, model, method, momentum):
        reached = r["accuracy"] if r["cr"] >= cr else 0.1
        best[r["seed"]] = max(best.get(r["seed"], 0.1), reached)
    return best


def plot(path: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    results = expand(results)
    fig, axes = plt.subplots(len(args.momenta), len(args.models), squeeze=False,
                             figsize=(5.5 * len(args.models), 4 * len(args.momenta)))  # fmt: skip
    for i, momentum in enumerate(args.momenta):
        for j, model in enumerate(args.models):
            ax = axes[i][j]
            dense = _dense_accuracy(results, model, momentum)
            if dense is not None:
                ax.axhline(100 * dense, color="grey", linestyle="--", linewidth=1,
                           label="dense")  # fmt: skip
            for method in _compressing(args.methods):
                pts = [(c, a) for c, a in front(_points(results, model, method, momentum))
                       if c <= MAX_PLOTTED_CR]  # beyond: every weight gone, chance accuracy
                if pts:
                    ax.plot([c for c, _ in pts], [100 * a for _, a in pts], marker="o",
                            label=method)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlim(1, MAX_PLOTTED_CR)
            ax.set_title(f"{model}, momentum {momentum}")
            ax.set_xlabel("compression ratio (Pareto front)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_ylim(bottom=max(0, ax.get_ylim()[0]))
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


UNSHOWN = ("--reuse", "--cache")  # where runs are kept, not what they are


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--momenta", nargs="+", type=float, default=[0.0, 0.9])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true",
                   help="one seed, momentum 0.9, every third lambda, 20 epochs")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="share of the steps over which lambda ramps up from 0 (0: fixed)")
    p.add_argument("--note", default="", help="what the page should say about this run")
    p.add_argument("--cut", action="store_true",
                   help="also cut DWF's and L1's weights to each CR of CUTS (no retraining)")
    p.add_argument("--stable", action="store_true",
                   help="choose no rate at which a validation run diverged or lost every weight")
    p.add_argument("--lrs", nargs="+", default=[], metavar="METHOD=LR,LR,...",
                   help="the learning rates searched for a method, at momentum 0.9")
    p.add_argument("--dwf-lambdas", nargs="+", type=float, default=DWF_LAMBDAS,
                   help="the lambdas swept for DWF (every D); a longer budget needs smaller ones")
    p.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="RUNS_JSON",
                   help="runs files of earlier runs to put into the cache first")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache" / "paper_regime")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results-paper-regime.md")
    args = p.parse_args(argv)
    for method in ("dwf2", "dwf3", "dwf4"):
        LAMBDAS[method] = args.dwf_lambdas
    for item in args.lrs:
        method, _, rates = item.partition("=")
        if method not in LRS or not rates:
            p.error(f"--lrs {item}: expected METHOD=LR,LR,... with METHOD one of {list(LRS)}")
        LRS[method] = [float(r) for r in rates.split(",")]
    if args.quick:
        args.seeds, args.momenta, args.epochs = [0], [0.9], min(args.epochs, 20)
        for method in LAMBDAS:
            LAMBDAS[method] = LAMBDAS[method][::3]
    command = "python benchmarks/paper_regime.py " + shlex.join(
        without_options(sys.argv[1:] if argv is None else argv, UNSHOWN))  # fmt: skip
    if args.reuse:
        print(f"reused {reuse(args.reuse, args.cache)} runs into {args.cache}")
    lrs, validation = choose_lrs(args, args.cache)
    specs = [{"model": m, "method": me, "momentum": mo, "lr": lrs[(m, me, mo)], "seed": s,
              "epochs": args.epochs, "split": "test", **point, **_warmup(me, args),
              **_cut(me, args)}
             for m in args.models for me in args.methods for mo in args.momenta
             for point in _sweep(me) for s in args.seeds]  # fmt: skip
    results = execute(specs, args.cache, args.jobs)
    plot_name = args.out.with_suffix(".png").name
    plot(args.out.with_suffix(".png"), results, args)
    write_text_atomic(args.out, render(results, lrs, args, command.strip(), plot_name))
    runs = args.out.with_name(args.out.stem + "_runs.json")
    write_text_atomic(runs, json.dumps(validation + results, indent=0, sort_keys=True))
    print(f"wrote {args.out}, {plot_name} and {runs.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
