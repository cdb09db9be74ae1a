"""The accuracy-vs-sparsity benchmark end to end on a tiny setting, and its pieces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dwfc  # noqa: E402
from benchmarks import accuracy_vs_sparsity as bench  # noqa: E402
from benchmarks.bench_data import mnist5k_validation  # noqa: E402
from benchmarks.finetune_dynamics import Tracer, summarise  # noqa: E402
from benchmarks.finetune_masks import cut_to  # noqa: E402
from benchmarks.finetune_mechanism import _constrained  # noqa: E402
from benchmarks.paired import paired  # noqa: E402
from benchmarks.paper_regime import (  # noqa: E402
    CUTS,
    OUTPUTS,
    best_at,
    cr_within,
    execute,
    expand,
    front,
    reuse,
    run,
)
from dwfc.config import load_recipe  # noqa: E402
from dwfc.data import mnist5k  # noqa: E402
from dwfc.errors import InputError  # noqa: E402
from dwfc.factorize import factorized_weights  # noqa: E402


def test_quick_benchmark_writes_table_plot_and_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "docs" / "results.md"
    argv = ["--quick", "--models", "lenet300", "--methods", "dwf3", "gmp", "random",
            "--sparsities", "0.9", "0.95", "--seeds", "0", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--recipes", str(tmp_path / "recipes")]  # fmt: skip
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "GMP (cubic)" in printed and "0.95 (CR 20)" in printed
    page = out.read_text()
    assert "| DWF D=3 |" in page and "| random |" in page and "## Verdict" in page
    assert "python benchmarks/accuracy_vs_sparsity.py --quick" in page
    png = out.parent / "results_accuracy_vs_cr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert len(runs) == 6 and all(r["accuracy"] is not None for r in runs)
    assert all(r["achieved"] == pytest.approx(r["sparsity"], abs=1e-6) for r in runs)
    # a second invocation finds every run in the cache and runs nothing
    assert bench.main([*argv, "--report-only"]) == 0
    assert "6 runs cached" not in capsys.readouterr().out  # report-only does not even look


def test_validation_split_is_carved_from_train_and_never_touches_test() -> None:
    train, val = mnist5k_validation()
    full_train, test = mnist5k()
    assert (len(train), len(val)) == (3500, 500)
    assert val.tensors[1].bincount().tolist() == [50] * 10
    rows = {bytes(x.numpy().tobytes()) for x in full_train.tensors[0]}
    assert all(bytes(x.numpy().tobytes()) in rows for x in val.tensors[0][:50])
    test_rows = {bytes(x.numpy().tobytes()) for x in test.tensors[0]}
    assert not any(bytes(x.numpy().tobytes()) in test_rows for x in val.tensors[0])


def test_search_grid_and_written_recipe_validate(tmp_path: Path) -> None:
    grid = bench.search_grid("gmp")
    assert len(grid) == len(bench.SEARCH_LR) * len(bench.SEARCH_DECAY)
    path = bench.write_recipe("lenet5", "dwf4", ["train.lr=0.02", "train.min_lr_ratio=0.01"],
                              ["train.epochs=7"], "note", tmp_path)  # fmt: skip
    assert path.read_text().startswith("#")
    recipe = load_recipe(str(path))
    assert (recipe.factorize.depth, recipe.sparsity.method, recipe.train.epochs) == (4, "dwf", 7)
    assert recipe.train.lr == 0.02 and recipe.model.arch == "dwfc.zoo:lenet5"


def test_bad_flags_are_input_errors() -> None:
    with pytest.raises(InputError):
        bench.parse_args(["--sparsities", "1.5"])
    with pytest.raises(InputError):
        bench.parse_args(["--jobs", "0"])
    with pytest.raises(InputError, match="--set"):
        bench.parse_args(["--set", "lenet5:train.lr=0.1"])
    assert bench.parse_args(["--set", "lenet5/dwf4:train.lr=0.03"]).set == {
        "lenet5/dwf4": ["train.lr=0.03"]}


@pytest.mark.slow
def test_quick_search_writes_recipes_from_the_validation_split(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    argv = ["--quick", "--search", "--models", "lenet300", "--methods", "oneshot",
            "--sparsities", "0.9", "--seeds", "0", "--search-sparsity", "0.9",
            "--out", str(tmp_path / "results.md"), "--cache", str(tmp_path / "cache"),
            "--recipes", str(recipes)]  # fmt: skip
    assert bench.main(argv) == 0
    recipe = load_recipe(str(recipes / "bench-lenet300-oneshot.yaml"))
    assert recipe.sparsity.method == "oneshot" and recipe.train.epochs == 1
    search = json.loads((tmp_path / "results_search.json").read_text())
    entry = search["lenet300/oneshot"]
    assert len(entry["grid"]) == len(bench.search_grid("oneshot"))
    assert entry["chosen"] == [o for o in entry["chosen"] if o.startswith("train.")]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("s*.json")]
    assert runs and all(r["split"] == "val" for r in runs)
    assert all(r["recipe"]["data"]["source"].startswith("benchmarks.") for r in runs)
    assert "## Tuning" in (tmp_path / "results.md").read_text()


def test_paired_differences_are_per_seed_with_a_student_t_interval() -> None:
    a, b = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.5}, {0: 0.88, 1: 0.79, 2: 0.82}
    p = paired(a, b)  # seeds 0-2 only: seed 3 has no partner
    assert p is not None and p.seeds == 3
    assert p.mean == pytest.approx(2.0)  # points: 2, 1, 3
    assert (p.high - p.mean) == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)  # sd 1
    assert not p.significant  # [-0.48, +4.48]
    tight = paired({0: 0.920, 1: 0.921, 2: 0.919}, {0: 0.90, 1: 0.90, 2: 0.90})
    assert tight is not None and tight.significant and tight.low > 0
    assert paired({0: 0.9}, {0: 0.8}) is None  # one seed: no interval


def test_the_pareto_front_keeps_only_undominated_points() -> None:
    points = [(10, 0.95), (20, 0.97), (100, 0.90), (100, 0.80), (500, 0.91), (2000, 0.10)]
    assert front(points) == [(20, 0.97), (500, 0.91), (2000, 0.10)]
    assert best_at(points, 100) == 0.91 and best_at(points, 600) == 0.10
    assert best_at(points, 5000) is None


def _run(method: str, seed: int, accuracy: float, cr: float, **spec: float) -> dict:
    return {"model": "m", "method": method, "momentum": 0.9, "split": "test", "seed": seed,
            "accuracy": accuracy, "cr": cr, "lr": 0.1, "epochs": 1, "diverged": False,
            "sparsity": 1 - 1 / cr, **spec}  # fmt: skip


def test_compression_within_a_loss_is_read_per_seed_against_that_seeds_dense_run() -> None:
    runs = [_run("dense", 0, 0.95, 1.0), _run("dense", 1, 0.90, 1.0),
            _run("dwf3", 0, 0.945, 50, lam=1), _run("dwf3", 0, 0.93, 400, lam=2),
            _run("dwf3", 1, 0.93, 40, lam=1), _run("dwf3", 1, 0.88, 300, lam=2),
            _run("dwf3", 2, 0.99, 900, lam=1),  # no dense run for seed 2: not counted
            {**_run("dwf3", 0, 0.99, 800, lam=1), "split": "val"}]  # fmt: skip
    assert cr_within(runs, "m", "dwf3", 0.9, 1) == {0: 50, 1: 40}
    assert cr_within(runs, "m", "dwf3", 0.9, 2) == {0: 400, 1: 300}  # 0.88 is 2 below 0.90
    assert cr_within(runs, "m", "gmp", 0.9, 10) == {0: 1.0, 1: 1.0}  # no run: the dense model


def test_a_runs_file_puts_its_runs_back_into_the_cache_under_their_keys(tmp_path: Path) -> None:
    runs = [_run("dwf3", 0, 0.9, 50, lam=1), _run("dense", 0, 0.95, 1.0)]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    assert reuse([tmp_path / "runs.json"], tmp_path / "cache") == 2
    assert reuse([tmp_path / "runs.json"], tmp_path / "cache") == 0  # already there
    spec = {k: v for k, v in runs[0].items() if k not in OUTPUTS}
    assert execute([spec], tmp_path / "cache", 1) == [runs[0]]  # read back, not trained


def _traced(init: str) -> tuple[dict, dict]:
    import types

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    dwfc.factorize_(model, depth=3, init=init)  # type: ignore[arg-type]
    schedule = types.SimpleNamespace(total=10, steps_per_epoch=5, lr_at=lambda step: 0.1)
    method = types.SimpleNamespace(_factorized=list(factorized_weights(model)), lam=1e-3,
                                   schedule=schedule, scales={"weight": 2.0})  # fmt: skip
    tracer = Tracer()
    tracer.record(method, None, 0)  # type: ignore[arg-type]
    kept = {"weight": model.weight.detach().abs() > model.weight.detach().abs().median()}
    return summarise(tracer.snapshots[0], kept), tracer.snapshots[0]["layers"]["weight"]


def test_dynamics_trace_measures_misalignment_and_the_rate_on_w() -> None:
    row, layer = _traced("balanced")
    assert row["misalignment_kept"] == pytest.approx(0.0, abs=1e-6)
    assert row["misalignment_removed"] == pytest.approx(0.0, abs=1e-6)
    w = layer["w"].double()  # at balance the rate is lr x scale x D |w|^(2 - 2/D)
    expected = 0.1 * 2.0 * 3 * w.abs().pow(4 / 3)
    assert torch.allclose(layer["rate"].double(), expected, rtol=1e-4)
    assert row["agreement"] == 1.0  # the kept set is the top half by magnitude
    unbalanced, _ = _traced("layer")
    assert unbalanced["misalignment_kept"] > 0.01 and unbalanced["misalignment_removed"] > 0.01


def test_the_constrained_l1_holds_signs_and_lets_no_weight_revive() -> None:
    from unittest import mock

    from synthetic import loaders, mlp

    from dwfc.engine.trainer import train
    from dwfc.methods.l1 import L1

    recipe = load_recipe("default", ["train.epochs=4", "sparsity.finetune_epochs=1",
                                     "train.log_every=2", "sparsity.target=0.8",
                                     "sparsity.method=l1", "train.lr=0.5"])  # fmt: skip
    seen: dict[str, list[torch.Tensor]] = {}
    start, after_step = _constrained(True, True)

    def watched(self: L1, trainer: object, step: int) -> None:
        after_step(self, trainer, step)
        seen.setdefault("w", []).append(self.params["0.weight"].detach().clone())

    model = mlp()
    dense = model[0].weight.detach().clone()
    with mock.patch.object(L1, "start", start), mock.patch.object(L1, "after_step", watched):
        train(model, ["0.weight", "2.weight"], *loaders(), recipe, torch.device("cpu"),
              lambda *_: None)  # fmt: skip
    zeroed = torch.zeros_like(dense, dtype=torch.bool)
    for w in seen["w"]:
        assert not bool((w.sign() * dense.sign() < 0).any())  # no sign ever flips
        assert not bool(w[zeroed].any())  # a weight once zero stays zero
        zeroed |= w == 0
    assert 0 < int(zeroed.sum()) < dense.numel()


def test_one_shot_retrains_exactly_the_given_mask() -> None:
    from unittest import mock

    from synthetic import loaders, mlp

    from dwfc.engine.trainer import train
    from dwfc.methods.oneshot import OneShot

    recipe = load_recipe("default", ["train.epochs=2", "sparsity.finetune_epochs=1",
                                     "sparsity.target=0.75", "sparsity.method=oneshot"])
    model = mlp()
    g = torch.Generator().manual_seed(3)  # a mask magnitude would not choose
    masks = {n: torch.rand(model.get_parameter(n).shape, generator=g) < 0.25
             for n in ("0.weight", "2.weight")}  # fmt: skip
    with mock.patch.object(OneShot, "start", cut_to(masks)):
        train(model, list(masks), *loaders(), recipe, torch.device("cpu"), lambda *_: None)
    for name, mask in masks.items():
        w = model.get_parameter(name).detach()
        assert bool((w[~mask] == 0).all()) and bool((w[mask] != 0).all())


def test_the_structured_benchmark_runs_an_ablation_through_every_run_but_not_its_search() -> None:
    from benchmarks import structured

    args = structured.parse_args(["--set", "structure.min_keep=0.25", "--out", "x.md"])
    spec = {"model": "resnet_mini48", "method": "dwf3", "speedup": 4.0, "seed": 1,
            "split": "test"}  # fmt: skip
    recipe = load_recipe("default", structured.overrides(spec, 0.05, structured.run_budget(args)))
    assert (recipe.structure.min_keep, recipe.train.seed, recipe.train.lr) == (0.25, 1, 0.05)
    with pytest.raises(SystemExit):  # the search would overwrite the benchmark's learning rates
        structured.parse_args(["--search", "--set", "structure.min_keep=0.25"])


def test_structured_runs_reused_from_a_page_are_found_only_by_the_recipe_they_were_run_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from benchmarks import structured

    dense = tmp_path / "dense.pt"
    torch.save({"w": torch.arange(4.0)}, dense)
    monkeypatch.setattr(structured, "dense_path", lambda model, split, cache: dense)
    spec = {"model": "resnet_mini48", "method": "dwf3", "speedup": 4.0, "seed": 0,
            "split": "test"}  # fmt: skip
    run = {**spec, "lr": 0.2, "accuracy": 0.97, "machine": structured._machine(),
           "cache_version": structured.CACHE_VERSION}  # fmt: skip
    elsewhere = {**run, "seed": 1, "machine": "Another CPU, 2 logical CPUs"}
    older_code = {k: v for k, v in run.items() if k != "cache_version"} | {"seed": 2}
    runs_file = tmp_path / "page_runs.json"
    runs_file.write_text(json.dumps({"command": "python benchmarks/structured.py",
                                     "runs": [run, elsewhere, older_code]}))  # fmt: skip
    args = structured.parse_args(["--cache", str(tmp_path / "cache"), "--reuse", str(runs_file)])
    budget = structured.run_budget(args)
    assert structured.reuse([runs_file], args, budget) == 1
    assert structured.reuse([runs_file], args, budget) == 0  # already there

    def cached_at(lr: float) -> Path:
        recipe = load_recipe("default", structured.overrides(spec, lr, budget))
        return structured._cache_path(spec, recipe, dense, args.cache)

    assert json.loads(cached_at(0.2).read_text())["accuracy"] == 0.97
    assert not cached_at(0.1).is_file()
    ablation = structured.parse_args(["--set", "structure.min_keep=0.25"])
    with pytest.raises(SystemExit, match="min_keep"):
        structured.reuse([runs_file], ablation, structured.run_budget(ablation))
    shown = structured._shown(["--reuse", "a.json", "b.json", "--out", "x.md"])
    assert shown == ["--out", "x.md"]


def test_the_structured_page_compares_d_gating_with_each_method_seed_by_seed() -> None:
    from benchmarks import structured

    def runs(method: str, accuracies: list[float]) -> list[dict]:
        return [{"model": "resnet_mini48", "method": method, "speedup": 4.0, "seed": seed,
                 "accuracy": a} for seed, a in enumerate(accuracies)]  # fmt: skip

    cells = structured._cells([*runs("dwf3", [0.975, 0.970, 0.980]),
                               *runs("filter_l1", [0.965, 0.960, 0.970]),  # 1 point behind
                               *runs("slimming", [0.980, 0.965, 0.975])])  # level on average
    table = structured.paired_table("resnet_mini48", cells, ["dwf3", "filter_l1", "slimming"],
                                    [4.0])  # fmt: skip
    row = next(line for line in table.splitlines() if line.startswith("| 4x | D-Gating D=3"))
    assert "**+1.00 [+1.00, +1.00]**" in row  # the same gap on every seed: significant
    assert "+0.17 [" in row and "**+0.17" not in row  # seed-to-seed noise: not


def test_a_penalty_warm_up_lets_a_network_learn_before_lambda_can_empty_it() -> None:
    """From scratch, a fixed lambda kills LeNet-300-100 before it learns (chance accuracy); the
    same lambda ramped up over the run does not."""
    spec = {"model": "lenet300", "method": "dwf3", "momentum": 0.9, "lr": 0.1, "seed": 0,
            "epochs": 1, "split": "val", "lam": 0.1}  # fmt: skip
    fixed, ramped = run(spec), run({**spec, "warmup": 1.0})
    assert not fixed["diverged"] and fixed["accuracy"] < 0.15
    assert ramped["accuracy"] > 0.5


def test_a_cut_scores_the_trained_weights_at_each_ratio_and_leaves_the_run_as_it_was() -> None:
    """--cut: the run's own figures are those without it; each cut to a CR it has not reached
    is scored and becomes one more point of the front."""
    spec = {"model": "lenet300", "method": "dwf3", "momentum": 0.9, "lr": 0.2, "seed": 0,
            "epochs": 1, "split": "val", "lam": 0.002}  # fmt: skip
    plain, cut = run(spec), run({**spec, "cut": True})
    assert (cut["accuracy"], cut["cr"]) == (plain["accuracy"], plain["cr"])
    assert [float(c) for c in cut["cut_accuracy"]] == [c for c in CUTS if c > cut["cr"]]
    assert cut["cut_accuracy"]["3000"] < cut["accuracy"] - 0.3  # 89 of 266k weights left
    points = expand([cut])
    assert points[0] is cut and [p["cr"] for p in points[1:]] == [float(c) for c in CUTS]
    assert all(p["cut_to"] == p["cr"] and p["seed"] == 0 for p in points[1:])


def test_the_overhead_floor_counts_factorized_weight_entries_and_picks_the_fastest_variant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import overhead

    monkeypatch.setattr(overhead, "bandwidth", lambda device: 1e9)  # 1 GB/s
    steps = [{"model": "lenet5", "batch": 128, "depth": None, "mode": "dense", "step_ms": 10.0,
              "time_ratio": 1.0}] + [
        {"model": "lenet5", "batch": 128, "depth": 3, "mode": mode, "step_ms": ms,
         "time_ratio": ms / 10.0} for mode, ms in (("per weight", 13.0), ("fused", 11.0))
    ]  # fmt: skip
    (row,) = overhead.traffic_floor(torch.device("cpu"), steps)
    weights = 6 * 25 + 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10  # no biases
    assert row["entries"] == weights
    assert row["floor_ms"] == pytest.approx(1000 * 84 * weights / 1e9)
    assert row["floor_ratio"] == pytest.approx(1 + row["floor_ms"] / 10.0)
    assert (row["best_mode"], row["best_ratio"]) == ("fused", 1.1)
