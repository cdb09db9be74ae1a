"""Why D-Gating trails the channel baselines on LeNet-5 at 4x: a few variants, 3 seeds each.

    python benchmarks/structured_diagnostics.py   # about 2 minutes on 2 CPU cores

The budget and dense model of benchmarks/structured.py, scored on the test split (a diagnosis,
not a choice: nothing here picks a setting). Prints accuracy (mean ± sd) and, for seed 0, the
channels each convolution keeps. "cut at the end" moves D-Gating's exact cut from the end of the
ramp to the end of training, by disabling the ramp cut; "every group exempts" leaves the top
`round_to` channels of every group unpenalised, as dwfc first did, not only of the groups a
BatchNorm normalises (both monkeypatches; not recipe keys).
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

import torch  # noqa: E402

import dwfc  # noqa: E402
from benchmarks.structured import BUDGET, dense_path  # noqa: E402
from dwfc.config import load_recipe  # noqa: E402
from dwfc.methods.gating import DGating  # noqa: E402

BASE = ["model.arch=dwfc.zoo:lenet5", "structure.kind=channel", "structure.round_to=1",
        "structure.target_speedup=4", "train.checkpoint=false", "export.onnx=false", *BUDGET]
D3 = ["factorize.depth=3"]
VARIANTS = {  # label: (overrides, cut at the end, exempt the top channels of every group)
    "D-Gating D=3, lr 0.05": ([*D3, "train.lr=0.05"], False, False),
    "D-Gating D=3, lr 0.1": ([*D3, "train.lr=0.1"], False, False),
    "D-Gating D=4, lr 0.1": (["factorize.depth=4", "train.lr=0.1"], False, False),
    "D-Gating D=3, lr 0.05, uniform penalty": (
        [*D3, "train.lr=0.05", "structure.penalty=uniform"], False, False),
    "D-Gating D=3, lr 0.05, every group exempts": ([*D3, "train.lr=0.05"], False, True),
    "D-Gating D=3, lr 0.05, every group exempts, cut at the end": (
        [*D3, "train.lr=0.05"], True, True),
    "D-Gating D=3, lr 0.1, every group exempts": ([*D3, "train.lr=0.1"], False, True),
    "group lasso, lr 0.1": (["sparsity.method=group_lasso", "train.lr=0.1"], False, False),
}  # fmt: skip


def _exempt_everywhere(self: DGating) -> dict[str, torch.Tensor]:
    self.scale_free = {g.name for g in self.groups}
    return EXEMPT(self)


EXEMPT = DGating.exempt


def main() -> int:
    dense = dense_path("lenet5", "test", ROOT / "benchmarks" / "cache" / "structured")
    ramp_cut = DGating.after_step
    for label, (overrides, late_cut, everywhere) in VARIANTS.items():
        DGating.after_step = (lambda self, trainer, step: None) if late_cut else ramp_cut
        DGating.exempt = _exempt_everywhere if everywhere else EXEMPT
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
    DGating.after_step, DGating.exempt = ramp_cut, EXEMPT
    return 0


if __name__ == "__main__":
    sys.exit(main())
