"""Issue 14, part 3: is DWF behind L1 at high sparsity for what it keeps, or for its values?

    python benchmarks/finetune_masks.py   # 25 min on 2 cores: docs/results-finetune-masks.md

On LeNet-5 at sparsity 0.99 and 0.995, seeds 0-4, DWF D = 3 and L1 each run their bench run
(benchmarks/accuracy_vs_sparsity.py's recipes, budget, dense checkpoint, data order). Their
final masks, and the dense model's global magnitude mask, are then each retrained the same way:
the one-shot baseline's bench run (masked SGD from the dense weights, its recipe and budget),
with its magnitude cut replaced by the given mask (a monkeypatch of the oneshot method). The
same retraining for every mask isolates the choice of weights from the values training gave
them: if DWF's mask retrains as well as L1's, DWF loses on its values, not on its selection.
That retraining doubles the budget; the last row keeps it: DWF D = 3 for 15 epochs (plus its 3
of fine-tuning), then its mask retrained for 12 (plus 3), 33 epochs in all, as every bench run
(SHORT, REST). A second table fine-tunes DWF's own values within the budget: its 30 epochs
without the factor fine-tune, then 3 epochs of masked plain SGD from them (PLAIN_FINETUNE), as
they are and with each layer's kept weights rescaled to the dense RMS on the same entries.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import accuracy_vs_sparsity as avs  # noqa: E402
from benchmarks.bench_data import pretrain  # noqa: E402
from benchmarks.finetune_mechanism import MODEL, SEEDS, SPARSITIES, versus  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.methods.oneshot import OneShot  # noqa: E402

SOURCES = ("dwf3", "l1")  # whose masks are retrained, beside the dense magnitude mask
MASKS = {"dense": "dense magnitude (one-shot)", "dwf3": "DWF D=3's", "l1": "L1's",
         "dwf3_short": "DWF D=3's after 15 epochs, retrained 12 (33 epochs in all)"}
SHORT, REST = 15, 12  # epochs of the budget-keeping row (each plus 3 of fine-tuning)
NO_FINETUNE = ("sparsity.finetune_epochs=0",)
PLAIN_FINETUNE = ("train.epochs=3", "sparsity.finetune_epochs=0", "train.lr=0.01")
FINETUNES = {"dwf3": "its factors, masked, 3 epochs at lr 0.01 (the bench run)",
             "plain": "its collapsed weights, masked plain SGD, 3 epochs at lr 0.01",
             "rescaled": "the same, each layer's kept RMS first set back to the dense model's"}
Masks = dict[str, torch.Tensor]


def cut_to(masks: Masks) -> Any:
    """OneShot's `start`, cutting to `masks` instead of the weights' magnitudes."""

    def start(self: OneShot, trainer: Any) -> None:
        if set(masks) != set(self.params):
            raise RuntimeError("the mask must cover exactly the weights one-shot prunes")
        trainer.final_cut(dict(masks))

    return start


def _compress(method: str, sparsity: float, seed: int, dense: Path, masks: Masks | None = None,
              overrides: tuple[str, ...] = ()) -> tuple[float, Masks, Masks]:  # fmt: skip
    """A bench run's accuracy, final masks and final weights; `masks`: oneshot cuts to them
    instead of the magnitudes of `dense` (the checkpoint it starts from)."""
    with mock.patch.object(OneShot, "start", cut_to(masks)) if masks else nullcontext():
        _, report, final = avs.compress_bench_run(MODEL, method, sparsity, seed, dense, overrides)
    kept = {r.name: final[r.name] != 0 for r in report.layers}
    return report.accuracy.compressed_pytorch, kept, final


def plain_finetunes(sparsity: float, seed: int,
                    dense: Path) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """DWF D = 3 without its factor fine-tune, then its own values fine-tuned as plain weights
    (PLAIN_FINETUNE), as they are and with each layer's kept RMS set back to the dense one's."""
    state = torch.load(dense, map_location="cpu", weights_only=True)
    _, kept, values = _compress("dwf3", sparsity, seed, dense, overrides=NO_FINETUNE)
    ratios = {n: float(values[n][m].pow(2).mean().sqrt() / state[n][m].pow(2).mean().sqrt())
              for n, m in kept.items()}  # fmt: skip
    scaled = {k: v.clone() for k, v in values.items()}
    for n, m in kept.items():
        scaled[n][m] /= ratios[n]
    found = {}
    for label, start in (("plain", values), ("rescaled", scaled)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "start.pt"
            torch.save(start, path)
            found[label] = _compress("oneshot", sparsity, seed, path, kept, PLAIN_FINETUNE)[0]
    return found, ratios


def cell(job: tuple[float, int, str]) -> dict[str, Any]:
    """Everything of one (sparsity, seed): each source's run, then every mask retrained."""
    sparsity, seed, dense = job
    torch.set_num_threads(1)
    own, masks = {}, {}
    for method in SOURCES:
        own[method], masks[method], _ = _compress(method, sparsity, seed, Path(dense))
    retrained = {"dense": _compress("oneshot", sparsity, seed, Path(dense))[0]}
    for method in SOURCES:
        retrained[method] = _compress("oneshot", sparsity, seed, Path(dense), masks[method])[0]
    own["dwf3_short"], short, _ = _compress("dwf3", sparsity, seed, Path(dense),
                                            overrides=(f"train.epochs={SHORT}",))
    retrained["dwf3_short"] = _compress("oneshot", sparsity, seed, Path(dense), short,
                                        (f"train.epochs={REST}",))[0]
    a, b = masks["dwf3"], masks["l1"]
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    print(sparsity, seed, "own", {k: round(100 * v, 1) for k, v in own.items()}, "retrained",
          {k: round(100 * v, 1) for k, v in retrained.items()}, flush=True)  # fmt: skip
    finetuned, ratios = plain_finetunes(sparsity, seed, Path(dense))
    return {"sparsity": sparsity, "seed": seed, "own": own, "retrained": retrained,
            "jaccard": both / max(1, either), "finetuned": finetuned,
            "ratios": ratios}  # fmt: skip


def page(cells: list[dict[str, Any]], note: str) -> str:
    lines = ["# Fine-tuning regime: DWF's and L1's masks, retrained alike", "",
             f"{MODEL}, seeds {list(SEEDS)}. *Own training*: the method's bench run. *Retrained*: "
             "the mask, on the dense weights, trained by the one-shot baseline's bench run "
             "(masked SGD, its recipe and budget). Accuracy mean ± sd over seeds; paired "
             "difference against L1 (its own run, or its mask retrained) in points, two-sided "
             "95% Student-t interval, **bold** where it excludes zero. *Overlap*: the weights "
             "both DWF D = 3 and L1 keep, over those either keeps (mean over seeds). The "
             "script's docstring says why.", "", *([note, ""] if note else []),
             "| sparsity | mask | own training | vs L1 | retrained | vs L1's mask retrained |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for sparsity in SPARSITIES:
        here = [c for c in cells if c["sparsity"] == sparsity]
        l1_own = {c["seed"]: c["own"]["l1"] for c in here}
        l1_re = {c["seed"]: c["retrained"]["l1"] for c in here}
        for mask, label in MASKS.items():
            re = {c["seed"]: c["retrained"][mask] for c in here}
            own_cells = "– | –"
            if mask in own_of(here):
                own = {c["seed"]: c["own"][mask] for c in here}
                own_cells = (f"{_mean_sd(own)} | "
                             f"{'–' if mask == 'l1' else versus(own, l1_own)}")  # fmt: skip
            lines.append(f"| {sparsity} | {label} | {own_cells} | {_mean_sd(re)} | "
                         f"{'–' if mask == 'l1' else versus(re, l1_re)} |")  # fmt: skip
        overlap = statistics.fmean(c["jaccard"] for c in here)
        lines.append(f"| {sparsity} | overlap of DWF D=3's and L1's kept weights: "
                     f"{100 * overlap:.1f}% | | | | |")  # fmt: skip
    lines += ["", "Fine-tuning DWF D = 3's own values within the same 33 epochs (30 of DWF, "
              "then 3): accuracy, and the paired difference against L1's own run. *Kept RMS*: "
              "the RMS of each layer's kept weights at the cut over the dense model's RMS on the "
              "same entries, median over seeds (above 1: grown).", "",
              "| sparsity | DWF D=3's fine-tune | accuracy | vs L1 |", "| --- | --- | --- | --- |"]
    for sparsity in SPARSITIES:
        here = [c for c in cells if c["sparsity"] == sparsity]
        l1_own = {c["seed"]: c["own"]["l1"] for c in here}
        for key, label in FINETUNES.items():
            got = {c["seed"]: c["own"]["dwf3"] if key == "dwf3" else c["finetuned"][key]
                   for c in here}  # fmt: skip
            lines.append(f"| {sparsity} | {label} | {_mean_sd(got)} | {versus(got, l1_own)} |")
        ratios = ", ".join(f"{n} {statistics.median(c['ratios'][n] for c in here):.2f}"
                           for n in here[0]["ratios"])  # fmt: skip
        lines.append(f"| {sparsity} | kept RMS: {ratios} | | |")
    command = shlex.join(["python", "benchmarks/finetune_masks.py", *sys.argv[1:]])
    lines += ["", "Reproduce:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def own_of(cells: list[dict[str, Any]]) -> set[str]:
    """The masks whose method's own run is in `cells`."""
    return set(cells[0]["own"]) if cells else set()


def _mean_sd(values: dict[int, float]) -> str:
    acc = [100 * v for v in values.values()]
    return f"{statistics.fmean(acc):.1f} ± {statistics.stdev(acc):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--note", default="", help="a paragraph for the page: what it shows")
    args = parser.parse_args(argv)
    dense = pretrain(MODEL, "test", (ROOT / "benchmarks" / "cache").resolve(), 20)
    jobs = [(s, seed, str(dense)) for s in SPARSITIES for seed in SEEDS]
    with ProcessPoolExecutor(args.jobs) as pool:
        cells = list(pool.map(cell, jobs))
    out = ROOT / "docs" / "results-finetune-masks.md"
    write_text_atomic(out, page(cells, args.note))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
