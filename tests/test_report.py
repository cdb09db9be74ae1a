"""Tests for dwfc.report: JSON, markdown and the two PNG plots."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from dwfc.report import render_markdown, write_report
from dwfc.report.plots import epochs, layer_sparsity_figure, training_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = {"report.json", "layer_sparsity.png", "training.png", "report.md"}
SPARSE_NOTE = ("onnxruntime expands sparse initializers to dense tensors when it loads the model: "
               "the file is smaller, but memory use and speed are those of the dense model.onnx")
HASHED = ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias", "net.5.weight", "net.5.bias"]


def _history() -> list[dict[str, Any]]:
    rows = []
    phases = ["sparsify"] * 10 + ["settle"] * 5 + ["finetune"] * 5
    for i, phase in enumerate(phases):
        epoch = 0.5 * (i + 1)
        rows.append({
            "phase": phase, "epoch": epoch, "step": 16 * (i + 1), "loss": 0.5 / (i + 1),
            "train_acc": 0.9 + 0.003 * i,
            "eval_acc": 0.95 + 0.0005 * i if i % 2 else None,
            "sparsity_eps": min(0.93, 0.1 * i), "sparsity_rel": min(0.951, 0.11 * i),
            "sparsity_ctl": min(0.96, 0.12 * i) if phase != "finetune" else None,
            "lambda": {"sparsify": 1e-5 * 1.4**i, "settle": 1.5e-4}.get(phase),
            "lr": 0.05, "misalignment": 0.0,
        })
    return rows


def _report() -> dict[str, Any]:
    layers = [
        {"name": "net.1.weight", "shape": [300, 784], "weights": 235200, "nonzero": 9000,
         "sparsity": 0.9617, "factorized": True},
        {"name": "net.3.weight", "shape": [100, 300], "weights": 30000, "nonzero": 4000,
         "sparsity": 0.8667, "factorized": True},
        {"name": "net.5.weight", "shape": [10, 100], "weights": 1000, "nonzero": 310,
         "sparsity": 0.69, "factorized": True},
        {"name": "net.5.bias", "shape": [10], "weights": 10, "nonzero": 10,
         "sparsity": 0.0, "factorized": False},
    ]
    return {
        "dwfc_version": "0.1.0", "created": "2026-11-26T12:00:00Z",
        "model": {"source": "model.pt", "arch": "dwfc.zoo:lenet_300_100", "parameters": 266610,
                  "notes": []},
        "data": {"source": "mnist5k", "train_samples": 4000, "eval_samples": 1000},
        "input_shape": [1, 28, 28], "input_dtype": "float32", "device": "cpu",
        "precision": "fp32", "world_size": 1, "resumed": False,
        "method": {"name": "dwf", "depth": 3, "init": "balanced", "weight_decay": 1e-4,
                   "lambda": 1.5e-4, "lambda_history_max": 3e-4, "lr": 0.05, "optimizer": "sgd",
                   "schedule": "cosine", "divergence_restarts": 0},
        "sparsity": {"target": 0.95, "achieved": 0.95, "reached_by_training_eps": 0.93,
                     "reached_by_training_relative": 0.951, "reached_by_training_controlled": 0.964,
                     "largest_cut_relative": 0.1198, "eps": 1.19e-07,
                     "relative_threshold": 0.01, "control_threshold": 0.1,
                     "factorized_weights": 266200,
                     "nonzero_weights": 13310, "compression_ratio": 20.0,
                     "total_parameters": 266610, "unfactorized_parameters": 410},
        "layers": layers,
        "accuracy": {"original": 0.962, "before_cut": 0.958, "after_cut": 0.957,
                     "after_finetune": 0.960, "compressed_pytorch": 0.960,
                     "compressed_onnxruntime": 0.960},
        "onnx": {"max_abs_diff": 2e-6, "tolerance": 1e-4, "checker": "passed", "opset": 17,
                 "sparse_variant": "model.sparse.onnx", "sparse_variant_note": SPARSE_NOTE},
        "files": {"dense_fp32_bytes": 1066440, "model.safetensors": 120000,
                  "model.onnx": 1070000, "model.sparse.onnx": 160000},
        "hashes": {name: "sha256:" + f"{i:064x}" for i, name in enumerate(HASHED)},
        "timing": {"total_s": 41.2, "load_s": 0.5, "train_s": 35.0, "finetune_s": 3.0,
                   "export_s": 2.7},
        "history": _history(),
        "gates": [], "warnings": [],
        "recipe": {"name": "lenet-mnist", "dwf": {"depth": 3, "init": "balanced"},
                   "sparsity": {"target": 0.95},
                   "train": {"epochs": 10, "lr": 0.05, "optimizer": "sgd"}},
    }


@pytest.fixture
def report() -> dict[str, Any]:
    return _report()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The full synthetic report, rendered once for the read-only tests."""
    out = tmp_path_factory.mktemp("report")
    return out, write_report(out, _report())


def test_writes_exactly_four_files(written: tuple[Path, list[Path]]) -> None:
    out, paths = written
    assert [p.name for p in paths] == ["report.json", "layer_sparsity.png", "training.png",
                                       "report.md"]
    assert all(p.parent == out and p.is_file() and p.stat().st_size > 0 for p in paths)
    # nothing else left behind: no temp files, hidden or not
    assert {p.name for p in out.iterdir()} == FILES


def test_json_round_trip_with_nan(tmp_path: Path, report: dict[str, Any]) -> None:
    report["accuracy"]["compressed_onnxruntime"] = float("nan")
    report["history"][3]["loss"] = float("inf")
    original = copy.deepcopy(report)
    write_report(tmp_path, report)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert text.startswith("{\n  ")  # indent=2
    loaded = json.loads(text)
    expected = copy.deepcopy(original)
    expected["accuracy"]["compressed_onnxruntime"] = None
    expected["history"][3]["loss"] = None
    assert loaded == expected
    # the caller's mapping is not modified
    assert math.isnan(report["accuracy"]["compressed_onnxruntime"])


def test_markdown_content(written: tuple[Path, list[Path]]) -> None:
    md = (written[0] / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# ")
    for layer in _report()["layers"]:
        row = next(line for line in md.splitlines() if f"`{layer['name']}`" in line)
        assert row.startswith("|")
        assert f"{layer['weights']:,}" in row and f"{layer['nonzero']:,}" in row
    assert "| 300×784 |" in md
    assert "96.17 %" in md  # layer sparsity
    assert "95.00 %" in md  # target / achieved sparsity
    assert "20.0x" in md
    assert "96.20 %" in md and "96.00 %" in md  # accuracy original -> compressed
    assert "![" in md and "](layer_sparsity.png)" in md and "](training.png)" in md
    assert "```yaml\n" in md and "name: lenet-mnist" in md and "target: 0.95" in md
    assert "KiB" in md and "MiB" in md
    for section in ("## Accuracy", "## Sparsity", "## Per layer", "## Method", "## Files",
                    "## ONNX check", "## Timing", "## Recipe"):
        assert section in md
    assert "passed" in md and "—" not in md.split("## ONNX check")[1].split("## Timing")[0]


def test_yaml_recipe_keeps_order(written: tuple[Path, list[Path]]) -> None:
    md = (written[0] / "report.md").read_text(encoding="utf-8")
    block = md.split("```yaml\n")[1].split("```")[0]
    keys = [line.split(":")[0] for line in block.splitlines() if not line.startswith(" ")]
    assert keys == ["name", "dwf", "sparsity", "train"]


def test_pngs_are_valid(written: tuple[Path, list[Path]]) -> None:
    for name in ("layer_sparsity.png", "training.png"):
        path = written[0] / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 400
        assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def test_many_layers_scale_height(report: dict[str, Any]) -> None:
    small = layer_sparsity_figure(report).get_size_inches()[1]
    report["layers"] = [
        {"name": f"features.{i}.conv.weight", "shape": [64, 64, 3, 3], "weights": 36864,
         "nonzero": 1000 + i, "sparsity": 0.5 + i / 130, "factorized": i % 7 != 0}
        for i in range(60)
    ]
    fig = layer_sparsity_figure(report)
    assert fig.get_size_inches()[1] > 4 * small
    assert len(fig.axes[0].get_yticklabels()) == 60


def test_missing_optional_sections(tmp_path: Path, report: dict[str, Any]) -> None:
    report["onnx"] = None
    del report["files"]["model.onnx"]
    report["accuracy"]["compressed_onnxruntime"] = None
    del report["timing"]["export_s"]
    report["recipe"] = None
    paths = write_report(tmp_path, report)
    assert {p.name for p in paths} == FILES
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    onnx = md.split("## ONNX check")[1].split("## Timing")[0]
    assert "| Max abs diff (onnxruntime vs PyTorch) | — |" in onnx
    assert "| Checker | — |" in onnx
    onnx_row = next(line for line in md.splitlines() if "`model.onnx`" in line)
    assert onnx_row.count("—") == 3
    acc_row = next(line for line in md.splitlines() if "Compressed (onnxruntime)" in line)
    assert "—" in acc_row
    assert json.loads((tmp_path / "report.json").read_text())["onnx"] is None


def test_sparse_report_does_not_crash(tmp_path: Path) -> None:
    minimal: dict[str, Any] = {"model": None, "layers": [], "history": [], "sparsity": {},
                               "method": {"depth": 2}}
    paths = write_report(tmp_path, minimal)
    assert {p.name for p in tmp_path.iterdir()} == FILES
    md = paths[-1].read_text(encoding="utf-8")
    assert "—" in md and "## Per layer" in md and "](training.png)" in md
    for png in paths[1:3]:
        assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_history_without_eval_or_lambda(tmp_path: Path, report: dict[str, Any]) -> None:
    for row in report["history"]:
        row["eval_acc"] = None
        row["lambda"] = 0.0
    write_report(tmp_path, report)
    assert (tmp_path / "training.png").read_bytes()[:8] == PNG_SIGNATURE


def test_epochs_continue_when_a_phase_restarts_at_zero() -> None:
    history = [{"phase": "sparsify", "epoch": 1.0}, {"phase": "sparsify", "epoch": 2.0},
               {"phase": "finetune", "epoch": 0.5}, {"phase": "finetune", "epoch": 1.0},
               {"phase": "finetune", "epoch": None}]
    assert epochs(history) == [1.0, 2.0, 2.5, 3.0, 3.0]


# --------------------------------------------------------------------------- newer report fields


def _md(report: dict[str, Any]) -> str:
    return render_markdown(report)


def _part(md: str, heading: str) -> str:
    """The text of one `## heading` section ("" when the report has none)."""
    marker = f"## {heading}\n"
    if marker not in md:
        return ""
    return md.split(marker, 1)[1].split("\n## ", 1)[0].strip("\n")


def _row(md: str, label: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {label}"))


def test_controlled_sparsity_and_largest_cut(report: dict[str, Any]) -> None:
    md = _md(report)
    summary = md.split("\n\n")[1]
    assert ("Training alone brought 96.40 % of the weights under 0.1x their layer's RMS; "
            "the cut removed none larger than 0.12x.") in summary
    sparsity = _part(md, "Sparsity")
    assert "| Reached by training at \\|w\\| < 0.1x layer RMS (controlled) | 96.40 % |" in sparsity
    assert "| Largest \\|w\\| removed by the cut | 0.12x layer RMS |" in sparsity


def test_largest_cut_zero_and_controlled_absent(report: dict[str, Any]) -> None:
    report["sparsity"]["largest_cut_relative"] = 0.0
    assert "the cut removed only weights that were already zero" in _md(report)
    for key in ("reached_by_training_controlled", "largest_cut_relative", "control_threshold"):
        del report["sparsity"][key]
    md = _md(report)
    assert "Training alone" not in md and "the cut removed" not in md
    assert _row(md, "Reached by training at \\|w\\| < —x layer RMS (controlled)").endswith("| — |")
    assert _row(md, "Largest \\|w\\| removed by the cut").endswith("| — |")


def test_batchnorm_rows_only_when_recorded(report: dict[str, Any]) -> None:
    assert "BatchNorm" not in _md(report)
    report["accuracy"].update(before_bn_recalibration=0.52, after_bn_recalibration=0.955)
    acc = _part(_md(report), "Accuracy")
    lines = acc.splitlines()
    before = lines.index("| Before BatchNorm recalibration | 52.00 % | -44.20 pp |")
    after = lines.index("| After BatchNorm recalibration | 95.50 % | -0.70 pp |")
    finetune = next(i for i, line in enumerate(lines) if "After masked fine-tune" in line)
    compressed = next(i for i, line in enumerate(lines) if "Compressed (PyTorch)" in line)
    assert finetune < before < after < compressed


def test_method_name_dwf(report: dict[str, Any]) -> None:
    md = _md(report)
    assert md.splitlines()[0] == "# dwfc compression report: model.pt (DWF, D = 3)"
    assert "Deep Weight Factorization (`dwf`) at depth D = 3" in md
    method = _part(md, "Method")
    assert "| Method | `dwf` (Deep Weight Factorization) |" in method
    assert "| Divergence restarts | 0 |" in method and "restarted" not in md
    assert "L<sub>2/D</sub>" in method
    del report["method"]["name"]  # reports from before the baselines were all DWF
    assert "(DWF, D = 3)" in _md(report)


def test_method_name_baseline(report: dict[str, Any]) -> None:
    report["method"].update(name="gmp", weight_decay=None, lambda_history_max=None,
                            divergence_restarts=2)
    md = _md(report)
    assert md.splitlines()[0] == "# dwfc compression report: model.pt (gmp baseline)"
    assert "the gradual magnitude pruning baseline (`gmp`)" in md
    assert "Deep Weight Factorization" not in md.split("## Method")[0]
    assert "restarted 2 time(s)" in md
    method = _part(md, "Method")
    assert "| Method | `gmp` (gradual magnitude pruning) |" in method
    assert "| Final lambda | 1.5e-4 |" in method  # DWF rows still shown where recorded
    assert "| Depth D | 3 |" in method
    assert "weight decay" not in method and "Max lambda" not in method
    assert "L<sub>2/D</sub>" not in method and "baseline" in method


def test_warnings_near_the_top(report: dict[str, Any]) -> None:
    assert "## Warnings" not in _md(report)
    report["warnings"] = ["the exact cut cost 4.9 points: train longer",
                          "layer collapse: every weight of fc3 was pruned"]
    md = _md(report)
    assert md.index("## Warnings") < md.index("## Accuracy")
    warnings = _part(md, "Warnings")
    assert warnings.startswith("> [!WARNING]\n")
    assert "> - The exact cut cost 4.9 points: train longer." in warnings
    assert "> - Layer collapse: every weight of fc3 was pruned." in warnings


def test_quality_gates(report: dict[str, Any]) -> None:
    assert "## Quality gates" not in _md(report)
    report["gates"] = [
        {"gate": "max_accuracy_drop", "threshold": 0.5, "value": 1.234, "passed": False},
        {"gate": "min_sparsity", "threshold": 0.9, "value": 0.95, "passed": True},
    ]
    md = _md(report)
    gates = _part(md, "Quality gates")
    assert "| `max_accuracy_drop` | at most 0.50 pp | 1.23 pp | **FAIL** |" in gates
    assert "| `min_sparsity` | at least 90.00 % | 95.00 % | PASS |" in gates
    assert "exit with code 3" in gates
    assert "**Quality gate failed: max_accuracy_drop**" in md.split("\n\n")[1]
    assert md.index("## Quality gates") < md.index("## Accuracy")
    report["gates"] = report["gates"][1:]
    assert "All 1 quality gate(s) passed." in _md(report)


def test_notes(report: dict[str, Any]) -> None:
    assert "## Notes" not in _md(report)
    report["model"]["notes"] = ["torchvision:vgg11 built with weights=None: every weight comes "
                                "from model.pt", "  "]
    notes = _part(_md(report), "Notes")
    assert "- torchvision:vgg11 built with weights=None: every weight comes from model.pt." in notes
    assert notes.count("\n- ") == 1  # the blank note is dropped


def test_run_table(report: dict[str, Any]) -> None:
    run = _part(_md(report), "Run")
    for row in ("| Device | cpu |", "| Precision | fp32 |", "| Processes (world size) | 1 |",
                "| Resumed from a checkpoint | no |",
                "| Input shape (one sample) | 1×28×28 (float32) |",
                "| Data | `mnist5k` (4,000 train / 1,000 eval) |"):
        assert row in run
    for key in ("device", "precision", "world_size", "resumed", "input_shape", "input_dtype"):
        del report[key]
    run = _part(_md(report), "Run")
    assert "| Device | — |" in run and "| Resumed from a checkpoint | — |" in run
    assert "| Input shape (one sample) | — |" in run


def test_sparse_onnx_variant(report: dict[str, Any]) -> None:
    md = _md(report)
    onnx, files = _part(md, "ONNX check"), _part(md, "Files")
    assert "| Sparse variant | `model.sparse.onnx` |" in onnx
    assert f"`model.sparse.onnx`: {SPARSE_NOTE}." in onnx
    assert "| `model.sparse.onnx` | 160,000 | 156.25 KiB | 0.150 (6.7x smaller) |" in files
    assert "smaller on disk only" in files
    report["onnx"].update(sparse_variant=None, sparse_variant_note=None)  # not smaller: not written
    del report["files"]["model.sparse.onnx"]
    md = _md(report)
    onnx, files = _part(md, "ONNX check"), _part(md, "Files")
    assert "| Sparse variant | not written |" in onnx and "expands" not in onnx
    assert "model.sparse.onnx" not in files
    del report["onnx"]["sparse_variant"]  # reports from before the variant existed
    assert "| Sparse variant | — |" in _part(_md(report), "ONNX check")


def test_hashes_one_line(report: dict[str, Any]) -> None:
    md = _md(report)
    assert "sha256:" not in md and "0" * 60 not in md
    line = ("SHA-256 hashes of the 6 exported tensors are in report.json (`hashes`); "
            "`dwfc verify` checks them.")
    assert line in _part(md, "Files")
    del report["hashes"]
    assert "SHA-256" not in _md(report)


def test_training_plot_controlled_sparsity_and_log_lambda(report: dict[str, Any]) -> None:
    fig = training_figure(report)
    top, bottom, lam_ax = fig.axes
    labels = [line.get_label() for line in bottom.get_lines()]
    assert "|w| < 0.1 x RMS (controlled)" in labels
    assert "|w| < 0.01 x RMS (relative)" in labels and "|w| < eps (1.19e-7)" in labels
    ctl = bottom.get_lines()[labels.index("|w| < 0.1 x RMS (controlled)")]
    assert len(ctl.get_xdata()) == 15  # the 5 fine-tune rows have no controlled sparsity
    assert lam_ax.get_yscale() == "log"
    (lam_line,) = lam_ax.get_lines()
    assert len(lam_line.get_xdata()) == 15  # fine-tune rows: lambda None, skipped
    assert all(v > 0 for v in lam_line.get_ydata())
    fig_no_ctl = training_figure({**report, "history": [
        {k: v for k, v in row.items() if k != "sparsity_ctl"} for row in report["history"]]})
    labels = [line.get_label() for line in fig_no_ctl.axes[1].get_lines()]
    assert not any("controlled" in label for label in labels)


def _gated(accuracy: dict[str, float], classes: int | None = None) -> Any:
    from dwfc.config import load_recipe
    from dwfc.report.build import gate_results, warnings_for
    from dwfc.report.schema import RunReport

    report = RunReport.from_dict({"accuracy": accuracy, "sparsity": {"achieved": 0.9},
                                  "method": {"name": "gmp"}, "data": {"classes": classes}})
    report.gates = gate_results(load_recipe("default", ["gates.max_accuracy_drop=1"]), report)
    report.warnings = warnings_for(report)
    return report


def test_the_int8_model_has_its_own_accuracy_gate(tmp_path: Path) -> None:
    from dwfc.errors import QualityGateFailed
    from dwfc.report.build import raise_for_gates

    report = _gated({"original": 0.95, "compressed_pytorch": 0.945, "compressed_int8": 0.93})
    passed = {g.gate: g.passed for g in report.gates}
    assert passed == {"max_accuracy_drop": True, "max_accuracy_drop_int8": False}
    with pytest.raises(QualityGateFailed, match="max_accuracy_drop_int8 2"):
        raise_for_gates(report, tmp_path)


@pytest.mark.parametrize("classes, original, flagged", [
    (2, 0.8, False), (2, 0.52, True), (10, 0.25, False), (10, 0.12, True), (1000, 0.05, False),
])  # fmt: skip
def test_an_original_near_chance_is_flagged(classes: int, original: float, flagged: bool) -> None:
    report = _gated({"original": original, "compressed_pytorch": original}, classes)
    assert any("near or below chance" in w for w in report.warnings) == flagged


def test_a_model_trained_from_scratch_is_not_flagged_for_its_random_original() -> None:
    from dwfc.report.build import warnings_for
    from dwfc.report.schema import RunReport

    def warned(init: str) -> bool:
        report = RunReport.from_dict({"accuracy": {"original": 0.1, "compressed_pytorch": 0.95},
                                      "method": {"name": "dwf", "init": init},
                                      "data": {"classes": 10}})  # fmt: skip
        return any("near or below chance" in w for w in warnings_for(report))

    assert warned("balanced") and not warned("varmatch")
