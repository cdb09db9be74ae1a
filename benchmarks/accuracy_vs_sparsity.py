"""Accuracy against sparsity: DWF (D = 2, 3, 4) against the pruning baselines on mnist5k.

    python benchmarks/accuracy_vs_sparsity.py --models lenet300 lenet5 --jobs 2

Each model is trained dense once (seeded); every run starts from that checkpoint and goes through
`dwfc.compress` with the model's bench recipe (`benchmarks/recipes/bench-<model>-<method>.yaml`)
and `sparsity.target`, `train.seed` overrides. Each finished run is stored as JSON in `--cache`
(not tracked; an interrupted benchmark continues where it stopped when rerun with the same
flags), and the runs behind the page in one file beside it (docs/results_runs.json), from which
`--report-only` rebuilds the page without the cache. `--search` first picks the learning rate and
its cosine decay per method on a validation split carved out of the training set (never the test
set) and writes them into the bench recipes. See docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from math import nan
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and a source `dwfc` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks import bench_report  # noqa: E402
from benchmarks.bench_data import MODELS, VALIDATION_SOURCE, pretrain, state_hash  # noqa: E402
from dwfc.config import Recipe, apply_override, load_recipe  # noqa: E402
from dwfc.errors import DwfcError, InputError  # noqa: E402
from dwfc.outputs import SAFETENSORS  # noqa: E402
from dwfc.report.schema import AccuracyInfo, MethodInfo, RunReport, SparsityInfo  # noqa: E402

METHODS = {
    "dwf2": ("dwf", 2), "dwf3": ("dwf", 3), "dwf4": ("dwf", 4), "gmp": ("gmp", 2),
    "oneshot": ("oneshot", 2), "random": ("random", 2), "l1": ("l1", 2),
}  # fmt: skip
SPARSITIES = (0.95, 0.99, 0.98, 0.9, 0.995)  # run in this order: the headline ones first
SEARCH_LR = (0.5, 1.0, 2.0, 4.0)  # multiples of the method's default learning rate
SEARCH_DECAY = (0.1, 0.01)  # train.min_lr_ratio: where the cosine schedule ends
BASE_LR = 0.05
QUICK = ["train.epochs=1", "sparsity.finetune_epochs=1"]
FIXED = ["export.onnx=false", "train.checkpoint=false"]


RECIPES = ROOT / "benchmarks" / "recipes"


def recipe_path(model: str, method: str, folder: str | Path = RECIPES) -> Path:
    return Path(folder) / f"bench-{model}-{method}.yaml"


def base_overrides(model: str, method: str) -> list[str]:
    """The recipe of a (model, method) pair: its bench recipe if written, else the defaults."""
    kind, depth = METHODS[method]
    return [f"model.arch={MODELS[model]}", f"sparsity.method={kind}", f"factorize.depth={depth}"]


def load_run_recipe(spec: dict[str, Any]) -> Any:
    """The resolved dwfc recipe of one run."""
    path = recipe_path(spec["model"], spec["method"], spec["recipes"])
    source = str(path) if path.is_file() and not spec.get("defaults") else "default"
    overrides = [*base_overrides(spec["model"], spec["method"]), *spec.get("overrides", []),
                 f"sparsity.target={spec['sparsity']}", f"train.seed={spec['seed']}", *FIXED]
    device = spec.get("device", "cpu")
    overrides += [f"train.device={device}"] + (["train.amp=false"] if device != "cpu" else [])
    if spec["split"] == "val":
        overrides.append(f"data.source={VALIDATION_SOURCE}")
    return load_recipe(source, overrides)


def compress_bench_run(model: str, method: str, sparsity: float, seed: int, dense: Path,
                       overrides: Sequence[str] = ()) -> tuple[Any, RunReport, dict[str, Any]]:
    """One bench run on the test split, in this process and uncached (diagnostics patch the
    methods around it): its resolved recipe, its report and its final weights."""
    import dwfc

    spec = {"model": model, "method": method, "sparsity": sparsity, "seed": seed,
            "split": "test", "recipes": str(RECIPES), "overrides": list(overrides)}
    recipe = load_run_recipe(spec)
    with tempfile.TemporaryDirectory() as tmp:
        report = dwfc.compress(dense, Path(tmp) / "out", recipe)
        final = dwfc.load_sparse(Path(tmp) / "out" / SAFETENSORS)
    return recipe, report, final


# Bumped when dwfc trains differently for the same recipe, so that older cached runs are not
# reused: 2, baselines train the plain weights (before: a factorize/collapse round trip first).
CACHE_VERSION = 2


def run_key(spec: dict[str, Any], recipe: Any, dense: str) -> str:
    """The cache key: the resolved recipe, the split, the dense checkpoint's content and
    CACHE_VERSION.

    The device (fp32 on either) is recorded in each result but left out of the key, so runs made
    on another machine fill the same cache.
    """
    resolved = recipe.model_dump(mode="json")
    for key in ("device", "amp"):
        resolved["train"].pop(key, None)
    blob = json.dumps({"recipe": resolved, "split": spec["split"], "dense": dense,
                       "version": CACHE_VERSION}, sort_keys=True)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _summary(report: RunReport, seconds: float) -> dict[str, Any]:
    sp = report.sparsity or SparsityInfo()
    acc, method = report.accuracy or AccuracyInfo(), report.method or MethodInfo()
    return {
        "accuracy": acc.compressed_pytorch, "dense_accuracy": acc.original,
        "before_cut": acc.before_cut, "after_cut": acc.after_cut,
        "achieved": sp.achieved, "compression_ratio": sp.compression_ratio,
        "reached_eps": sp.reached_by_training_eps, "largest_cut": sp.largest_cut_relative,
        "nonzero": sp.nonzero_weights, "weights": sp.factorized_weights,
        "parameters": sp.total_parameters, "lambda": method.lam, "lr": method.lr,
        "safetensors_bytes": report.files.get(SAFETENSORS),
        "train_s": report.timing.get("train_s"), "finetune_s": report.timing.get("finetune_s"),
        "wall_s": seconds,
    }  # fmt: skip


def run_one(spec: dict[str, Any], dense_path: str, cache: str) -> dict[str, Any]:
    """Run one compression (in this process) and store its result in the cache."""
    import dwfc

    torch.set_num_threads(1)
    recipe = load_run_recipe(spec)
    result = {**spec, "key": spec["key"]}
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=cache))
    started = time.perf_counter()
    try:
        report = dwfc.compress(dense_path, work / "out", recipe)
        result.update(_summary(report, time.perf_counter() - started))
    except InputError:  # a mistake in the setup, not a result: never cached
        shutil.rmtree(work, ignore_errors=True)
        raise
    except DwfcError as exc:  # a diverged run is a result too (the search ranks it last)
        result.update(error=f"{type(exc).__name__}: {exc}", accuracy=None)
    except Exception:  # noqa: BLE001 - keep the benchmark going, record why
        result.update(error=traceback.format_exc(limit=3), accuracy=None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["recipe"] = recipe.model_dump(mode="json")
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tmp = Path(cache) / f".{spec['key']}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, Path(cache) / f"{spec['key']}.json")
    return result


def _init_worker() -> None:
    torch.set_num_threads(1)


def execute(specs: list[dict[str, Any]], dense: dict[tuple[str, str], str], cache: Path,
            jobs: int, deadline: float | None) -> list[dict[str, Any]]:  # fmt: skip
    """Run the specs not yet cached, `jobs` at a time, none started after `deadline`."""
    results, todo = [], []
    for spec in specs:
        cached = cache / f"{spec['key']}.json"
        if cached.is_file():
            results.append(json.loads(cached.read_text()))
        else:
            todo.append(spec)
    print(f"{len(results)} runs cached, {len(todo)} to run", flush=True)
    late = lambda: deadline is not None and time.time() > deadline  # noqa: E731

    def report(r: dict[str, Any]) -> None:
        acc = "error" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f}%"
        print(f"  {r['split']} {r['model']} {r['method']} s={r['sparsity']} seed={r['seed']} "
              f"{' '.join(r.get('overrides', []))}: {acc} ({r.get('wall_s', 0):.0f} s)",
              flush=True)  # fmt: skip
        results.append(r)

    args = lambda s: (s, dense[(s["model"], s["split"])], str(cache))  # noqa: E731
    def fresh(spec: dict[str, Any]) -> bool:  # another process may have filled it meanwhile
        cached = cache / f"{spec['key']}.json"
        if cached.is_file():
            results.append(json.loads(cached.read_text()))
            return False
        return True

    if jobs <= 1:
        for spec in todo:
            if late():
                break
            if fresh(spec):
                report(run_one(*args(spec)))
        return results
    os.environ["OMP_NUM_THREADS"] = "1"
    pending: set[Future[dict[str, Any]]] = set()
    queue: Iterator[dict[str, Any]] = iter(todo)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:  # fmt: skip
        while True:
            while len(pending) < jobs and not late():
                spec = next(queue, None)
                if spec is None:
                    break
                if fresh(spec):
                    pending.add(pool.submit(run_one, *args(spec)))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                report(future.result())
    return results


def make_specs(models: list[str], methods: list[str], sparsities: list[float], seeds: list[int],
               split: str, overrides: list[str], recipes: Path,
               grid: Callable[[str], list[list[str]]] | None = None,
               defaults: bool = False, device: str = "cpu") -> list[dict[str, Any]]:  # fmt: skip
    """The runs of a benchmark, headline sparsities first; each with its cache key."""
    order = {s: i for i, s in enumerate(SPARSITIES)}
    specs = []
    for model in models:
        for sparsity in sorted(sparsities, key=lambda s: order.get(s, len(order))):
            for seed in seeds:
                for method in methods:
                    for extra in grid(method) if grid else [[]]:
                        specs.append({"model": model, "method": method, "sparsity": sparsity,
                                      "seed": seed, "split": split, "defaults": defaults,
                                      "recipes": str(recipes), "device": device,
                                      "overrides": [*overrides, *extra]})  # fmt: skip
    return specs


def search_grid(method: str) -> list[list[str]]:
    """lr x decay candidates; DWF's lr is relative to its default for the depth."""
    kind, depth = METHODS[method]
    base = BASE_LR
    if kind == "dwf":
        base = load_recipe("default", [f"factorize.depth={depth}"]).train.lr or BASE_LR
    return [[f"train.lr={m * base:.4g}", f"train.min_lr_ratio={d}"]
            for m in SEARCH_LR for d in SEARCH_DECAY]  # fmt: skip


def write_recipe(model: str, method: str, chosen: list[str], budget: list[str], note: str,
                 folder: Path) -> Path:  # fmt: skip
    """benchmarks/recipes/bench-<model>-<method>.yaml with the chosen values and the shared
    budget."""
    data: dict[str, Any] = {}
    for override in [*base_overrides(model, method), "data.source=mnist5k", *budget, *chosen]:
        apply_override(data, override)
    data = {k: data[k] for k in Recipe.model_fields if k in data}  # the usual section order
    path = recipe_path(model, method, folder)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    command = f"dwfc compress dense.pt --recipe {shown} sparsity.target=0.95 --out runs/{model}"
    text = (f"# Benchmark recipe: {model}, {method} (benchmarks/accuracy_vs_sparsity.py).\n"
            f"#   {command}\n# {note}\n" + yaml.safe_dump(data, sort_keys=False))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    load_recipe(str(path))
    return path


def run_search(args: argparse.Namespace, cache: Path, budget: list[str]) -> None:
    """Pick lr and decay per (model, method) on the validation split; write the bench recipes."""
    searched = args.search_models or args.models
    dense = {(m, "val"): str(pretrain(m, "val", cache, args.dense_epochs)) for m in searched}
    specs = make_specs(searched, args.methods, [args.search_sparsity], [0], "val", budget,
                       args.recipes, grid=search_grid, defaults=True,
                       device=args.device)  # fmt: skip
    for spec in specs:
        spec["key"] = "s" + run_key(spec, load_run_recipe(spec), _dense_hash(dense[(spec["model"],
                                                                                     "val")]))
    results = execute(specs, dense, cache, args.jobs, None)
    table: dict[str, Any] = {}
    for model in searched:
        for method in args.methods:
            rows = [r for r in results if r["model"] == model and r["method"] == method]
            scored = [(r.get("accuracy") if r.get("accuracy") is not None else -1.0,
                       r["overrides"][len(budget):]) for r in rows]  # fmt: skip
            best_acc, chosen = max(scored, key=lambda t: t[0])
            note = (f"train.lr and train.min_lr_ratio chosen on a 500-image validation split at "
                    f"sparsity {args.search_sparsity} ({100 * best_acc:.1f}% validation accuracy)")
            write_recipe(model, method, chosen, budget, note, args.recipes)
            table[f"{model}/{method}"] = {"chosen": chosen, "validation_accuracy": best_acc,
                                          "grid": [[a, c] for a, c in scored]}  # fmt: skip
            print(f"search {model} {method}: {' '.join(chosen)} ({100 * best_acc:.2f}%)")
    for model in (m for m in args.models if m not in searched):  # not searched: borrow values
        for method in args.methods:
            source = table[f"{searched[0]}/{method}"]
            fixed = args.set.get(f"{model}/{method}", [])
            chosen = [o for o in source["chosen"] if o.split("=")[0] not in
                      {f.split("=")[0] for f in fixed}] + fixed  # fmt: skip
            note = (f"train.lr and train.min_lr_ratio NOT searched on {model}: taken from the "
                    f"{searched[0]} validation search"
                    + (f", except {' '.join(fixed)} (--set)" if fixed else ""))
            write_recipe(model, method, chosen, budget, note, args.recipes)
            table[f"{model}/{method}"] = {"chosen": chosen, "validation_accuracy": None,
                                          "from": searched[0], "set": fixed}  # fmt: skip
    out = search_file(args)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous.update(table)
    out.write_text(json.dumps(previous, indent=1) + "\n")


_HASHES: dict[str, str] = {}


def _dense_hash(path: str) -> str:
    if path not in _HASHES:
        _HASHES[path] = state_hash(torch.load(path, weights_only=True))
    return _HASHES[path]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--sparsities", nargs="+", type=float, default=sorted(SPARSITIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="train.epochs for every method (default: the bench recipes')")
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--dense-epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    p.add_argument("--recipes", type=Path, default=RECIPES,
                   help="where the bench recipes are read and --search writes them")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (fp32, amp off) for the runs")
    p.add_argument("--quick", action="store_true", help="a tiny setting, for tests")
    p.add_argument("--search", action="store_true", help="tune lr/decay on a validation split")
    p.add_argument("--search-sparsity", type=float, default=0.98)
    p.add_argument("--search-models", nargs="+", choices=list(MODELS), default=None,
                   help="search only these; the other --models borrow their chosen values")
    p.add_argument("--deadline", default=None, help="HH:MM (UTC): start no run after this")
    p.add_argument("--report-only", action="store_true", help="only rebuild the page from cache")
    p.add_argument("--note", default="", help="a sentence for the page's 'What ran' section")
    p.add_argument("--set", action="append", default=[], metavar="MODEL/METHOD:KEY=VALUE",
                   help="with --search: a value to use instead of the one borrowed from the "
                        "searched model, e.g. lenet5/dwf4:train.lr=0.03 (repeatable)")
    args = p.parse_args(argv)
    if any(not 0 < s < 1 for s in args.sparsities):
        raise InputError("--sparsities must lie strictly between 0 and 1")
    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    fixed: dict[str, list[str]] = {}
    for item in args.set:
        where, sep, override = item.partition(":")
        if not sep or "=" not in override or "/" not in where:
            raise InputError(f"--set {item!r}: expected MODEL/METHOD:section.key=value")
        fixed.setdefault(where, []).append(override)
    args.set = fixed
    return args


def search_file(args: argparse.Namespace) -> Path:
    """Where the search's grid and choices are kept: beside the results page."""
    return args.out.parent / "results_search.json"


def runs_file(args: argparse.Namespace) -> Path:
    """Where the runs behind the page are kept (one file, tracked): beside the results page,
    named after it (docs/results.md: docs/results_runs.json)."""
    return args.out.with_name(f"{args.out.stem}_runs.json")


def _published(result: dict[str, Any]) -> dict[str, Any]:
    """A run as the runs file keeps it: its figures and its budget, not the whole recipe."""
    kept = {k: v for k, v in result.items() if k not in ("recipe", "recipes")}
    recipe = result.get("recipe")
    if recipe:
        kept["budget"] = bench_report.budget_of(recipe)
    return kept


def write_runs(path: Path, results: list[dict[str, Any]]) -> None:
    runs = sorted((_published(r) for r in results), key=lambda r: r["key"])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in runs) + "\n]\n")
    os.replace(tmp, path)


def published_runs(path: Path, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the runs file that `specs` ask for (by model, method, sparsity and seed)."""
    if not path.is_file():
        raise InputError(f"--report-only: no runs file {path}; run the benchmark first")
    wanted = {(s["model"], s["method"], s["sparsity"], s["seed"]) for s in specs}
    return [r for r in json.loads(path.read_text())
            if (r["model"], r["method"], r["sparsity"], r["seed"]) in wanted]  # fmt: skip


def _deadline(text: str | None) -> float | None:
    if text is None:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    hour, minute = (int(part) for part in text.split(":"))
    when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return when.timestamp()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/accuracy_vs_sparsity.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    budget = list(QUICK) if args.quick else []
    if args.epochs is not None:
        budget.append(f"train.epochs={args.epochs}")
    if args.finetune_epochs is not None:
        budget.append(f"sparsity.finetune_epochs={args.finetune_epochs}")
    if args.quick:
        args.dense_epochs = min(args.dense_epochs, 2)
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if args.search:
        search_budget = budget or [f"train.epochs={load_recipe().train.epochs}",
                                   f"sparsity.finetune_epochs={load_recipe().sparsity.finetune_epochs}"]
        run_search(args, cache, search_budget)
    specs = make_specs(args.models, args.methods, args.sparsities, args.seeds, "test", budget,
                       args.recipes, device=args.device)
    if args.report_only:  # the page from the runs file alone: no training, no cache
        results = published_runs(runs_file(args), specs)
        dense_acc = {m: next((r["dense_accuracy"] for r in results if r["model"] == m), nan)
                     for m in args.models}  # fmt: skip
    else:
        dense = {(m, "test"): str(pretrain(m, "test", cache, args.dense_epochs))
                 for m in args.models}  # fmt: skip
        for spec in specs:
            spec["key"] = run_key(spec, load_run_recipe(spec),
                                  _dense_hash(dense[(spec["model"], "test")]))  # fmt: skip
        results = execute(specs, dense, cache, args.jobs, _deadline(args.deadline))
        dense_acc = {m: bench_report.dense_accuracy(dense[(m, "test")], m) for m in args.models}
    page = bench_report.write_page(args.out, specs, results, dense_acc, command,
                                   search_file(args), args.note)  # fmt: skip
    if not args.report_only:
        write_runs(runs_file(args), results)
    print(page.table_text)
    print(f"wrote {args.out}, {page.plot} and {runs_file(args)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
