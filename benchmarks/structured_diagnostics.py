"""Why D-Gating trails the channel baselines on LeNet-5 at 4x: a few variants, 3 seeds each.

    python benchmarks/structured_diagnostics.py   # about 2 minutes on 2 CPU cores

The budget and dense model of benchmarks/structured.py, scored on the test split (a diagnosis,
not a choice: nothing here picks a setting). Prints accuracy (mean ± sd) and, for seed 0, the
channels each convolution keeps. "cut at the end" moves D-Gating's exact cut from the end of the
ramp to the end of training, by disabling the ramp cut (a monkeypatch; not a recipe key).
See docs/structured.md#measured.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dwfc  # noqa: E402
from benchmarks.structured import BUDGET, dense_path  # noqa: E402
from dwfc.config import load_recipe  # noqa: E402
from dwfc.methods.gating import DGating  # noqa: E402

BASE = ["model.arch=dwfc.zoo:lenet5", "structure.kind=channel", "structure.round_to=1",
        "structure.target_speedup=4", "train.checkpoint=false", "export.onnx=false", *BUDGET]
VARIANTS = {
    "D-Gating D=3, lr 0.05": (["factorize.depth=3", "train.lr=0.05"], False),
    "D-Gating D=3, lr 0.05, cut at the end": (["factorize.depth=3", "train.lr=0.05"], True),
    "D-Gating D=3, lr 0.1": (["factorize.depth=3", "train.lr=0.1"], False),
    "D-Gating D=3, lr 0.1, cut at the end": (["factorize.depth=3", "train.lr=0.1"], True),
    "D-Gating D=3, lr 0.05, uniform penalty": (
        ["factorize.depth=3", "train.lr=0.05", "structure.penalty=uniform"], False),
    "group lasso, lr 0.1": (["sparsity.method=group_lasso", "train.lr=0.1"], False),
}  # fmt: skip


def main() -> int:
    dense = dense_path("lenet5", "test", ROOT / "benchmarks" / "cache" / "structured")
    ramp_cut = DGating.after_step
    for label, (overrides, late_cut) in VARIANTS.items():
        DGating.after_step = (lambda self, trainer, step: None) if late_cut else ramp_cut
        accuracies, kept = [], ""
        for seed in (0, 1, 2):
            recipe = load_recipe("default", [*BASE, *overrides, f"train.seed={seed}"])
            with tempfile.TemporaryDirectory() as tmp:
                report = dwfc.compress(dense, Path(tmp) / "out", recipe)
            accuracies.append(100 * report.accuracy.compressed_pytorch)
            if seed == 0:
                kept = ", ".join(f"{row.name} {row.kept_out}/{row.out_channels}"
                                 for row in report.structure.layers)  # fmt: skip
        print(f"{label}: {statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f} "
              f"(seed 0 keeps {kept})", flush=True)  # fmt: skip
    DGating.after_step = ramp_cut
    return 0


if __name__ == "__main__":
    sys.exit(main())
