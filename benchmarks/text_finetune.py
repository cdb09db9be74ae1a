"""Fine-tuning throughput and peak memory of a BERT-style text classifier: dense against DWF
D = 2, 3, 4 (fused, as the engine trains) and D = 3 per weight, side by side.

    OMP_NUM_THREADS=1 python benchmarks/text_finetune.py       # writes docs/text-finetune.md
    python benchmarks/text_finetune.py --device cuda --out docs/text-finetune-cuda.md

The models are built offline from a config (tests/tiny_text.py): the tests' tiny BERT (hidden
size 32, 2 layers) and a larger one (hidden 256, 4 layers), each with a WordPiece tokenizer
trained on the benchmark's sentences. Inputs are real tokenised batches of `--max-length`
tokens read through dwfc's text source (`text:FILE`); DWF factorizes what `dwfc compress`
factorizes by default (the encoder blocks' Linear weights). Each step is SGD with momentum and
weight decay (torch's fused SGD, as the engine uses it); the variants run in interleaved rounds
and the median step gives samples/s. Peak memory is, on the CPU, the exact account of
benchmarks/overhead.py (parameters, gradients, momentum and the tensors autograd saves), on
CUDA `torch.cuda.max_memory_allocated` over one step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from tiny_text import bert_dir, rows, write_csv  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import dwfc  # noqa: E402
from benchmarks.overhead import accounted_bytes, cuda_peak, sync, train_step  # noqa: E402
from dwfc import inputs  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.config import Recipe  # noqa: E402
from dwfc.data import load_data  # noqa: E402
from dwfc.engine.trainer import fused_sgd  # noqa: E402
from dwfc.export.latency import cpu_name  # noqa: E402
from dwfc.models import hf  # noqa: E402
from dwfc.models.defaults import with_model_defaults  # noqa: E402
from dwfc.select import plan  # noqa: E402

SIZES = {"tiny": (32, 2), "small": (256, 4)}  # name -> (hidden size, layers)
VARIANTS: list[tuple[int | None, bool]] = [(None, False), (2, True), (3, True), (4, True),
                                           (3, False)]  # (depth, fused)  # fmt: skip
MIN_ROUND_S = 0.3


def _label(variant: tuple[int | None, bool]) -> str:
    depth, fused = variant
    return "dense" if depth is None else f"D={depth} {'fused' if fused else 'per weight'}"


def _setup(model_dir: Path, variant: tuple[int | None, bool], device: torch.device) -> Any:
    depth, fused = variant
    torch.manual_seed(0)
    model, _ = hf.load(model_dir)
    if depth is not None:
        recipe, _ = with_model_defaults(Recipe(), model)
        dwfc.factorize_(model, depth=depth, params=[p.name for p in plan(model, recipe.factorize)])
    model.to(device).train()
    if fused:
        dwfc.fuse_(model)
    return model, fused_sgd([{"params": list(model.parameters()), "weight_decay": 5e-4}],
                            0.01, 0.9)  # fmt: skip


def measure(model_dir: Path, csv: Path, batch: int, max_length: int, rounds: int,
            device: torch.device) -> list[dict[str, Any]]:  # fmt: skip
    train, _ = load_data(f"text:{csv}", tokenizer=str(model_dir), max_length=max_length)
    x, y = next(iter(DataLoader(train, batch_size=batch, shuffle=False)))
    x, y = inputs.to(x, device), y.to(device)
    setups = {v: _setup(model_dir, v, device) for v in VARIANTS}
    peak = cuda_peak if device.type == "cuda" else accounted_bytes
    memory = {v: peak(*setups[v], x, y) for v in VARIANTS}
    train_step(*setups[VARIANTS[0]], x, y)
    sync(device)
    started = time.perf_counter()
    train_step(*setups[VARIANTS[0]], x, y)
    sync(device)
    steps = max(3, round(MIN_ROUND_S / max(time.perf_counter() - started, 1e-6)))
    times: dict[Any, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            train_step(*setups[v], x, y)
            sync(device)
            started = time.perf_counter()
            for _ in range(steps):
                train_step(*setups[v], x, y)
            sync(device)
            times[v].append((time.perf_counter() - started) / steps)
    dense_t, dense_m = statistics.median(times[VARIANTS[0]]), memory[VARIANTS[0]]
    params = sum(p.numel() for p in setups[VARIANTS[0]][0].parameters())
    out = []
    for v in VARIANTS:
        t = statistics.median(times[v])
        q1, _, q3 = (statistics.quantiles(times[v], n=4, method="inclusive")
                     if len(times[v]) > 1 else [t] * 3)  # fmt: skip
        out.append({"variant": _label(v), "batch": batch, "params": params,
                    "step_ms": 1000 * t, "q1_ms": 1000 * q1, "q3_ms": 1000 * q3,
                    "samples_s": batch / t, "throughput": dense_t / t,
                    "memory_mb": memory[v] / 2**20, "memory_ratio": memory[v] / dense_m})
    print(f"b{batch}: " + ", ".join(f"{r['variant']} {r['samples_s']:.0f}/s "
                                    f"x{r['throughput']:.2f} mem x{r['memory_ratio']:.2f}"
                                    for r in out), flush=True)  # fmt: skip
    return out


def page(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
         device: torch.device, elapsed: float) -> str:  # fmt: skip
    import platform

    cpu = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name()
    lines = ["# Text fine-tuning: DWF against dense on a BERT-style classifier", "",
             f"Measured {dt.date.today()} on {cpu} ({device.type}, "
             f"{torch.get_num_threads()} thread(s)), torch {torch.__version__}, Python "
             f"{platform.python_version()}; {args.rounds} interleaved rounds, median step; "
             f"{args.max_length} tokens per sample; {elapsed / 60:.1f} min in all.", "",
             "    " + " ".join(["OMP_NUM_THREADS=1" if device.type == "cpu" else "",
                                "python benchmarks/text_finetune.py", *sys.argv[1:]]).strip(),
             "", "Throughput is samples per second of fine-tuning steps (forward, backward, "
             "fused SGD with momentum and weight decay) on one real tokenised batch; "
             "*vs dense* is dense step time over this variant's (higher is faster). Memory is "
             "what a step holds at its peak (benchmarks/overhead.py's account on the CPU).", ""]
    for label in ("D=3 fused", "D=4 fused"):
        picked = [r for rows_ in results.values() for r in rows_ if r["variant"] == label]
        if picked:
            speed = [r["throughput"] for r in picked]
            memory = [r["memory_ratio"] for r in picked]
            lines += [f"- {label}: {min(speed):.2f}x to {max(speed):.2f}x dense throughput, "
                      f"{min(memory):.2f}x to {max(memory):.2f}x dense peak memory."]
    lines += ["", "What DWF adds is element-wise work over the factorized weights (D - 1 "
              "products and their gradients) and D - 1 more weight-sized factors, gradients "
              "and momentum buffers each; the matrix products and the attention over the "
              "tokens, most of a step, are the dense model's. So memory grows with D most "
              "where the weights outweigh the activations (the larger model at batch 32). "
              "Where two variants' quartiles overlap, their difference is within the "
              "round-to-round spread of this shared machine.", ""]
    for name, rows_ in results.items():
        hidden, layers = SIZES[name]
        lines += [f"## {name}: hidden size {hidden}, {layers} layers, "
                  f"{rows_[0]['params']:,} parameters", "",
                  "| batch | variant | step (ms), median [quartiles] | samples/s | vs dense "
                  "| peak memory (MiB) | vs dense |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        lines += [f"| {r['batch']} | {r['variant']} | {r['step_ms']:.2f} [{r['q1_ms']:.2f}, "
                  f"{r['q3_ms']:.2f}] | {r['samples_s']:.0f} "
                  f"| {r['throughput']:.2f}x | {r['memory_mb']:.2f} | {r['memory_ratio']:.2f}x |"
                  for r in rows_]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "text-finetune.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="dwfc-text-bench-") as tmp:
        folder = Path(tmp)
        csv = write_csv(folder / "train.csv", rows(max(args.batch), seed=1))
        for name in args.sizes:
            print(f"{name}:", flush=True)
            hidden, layers = SIZES[name]
            model_dir = bert_dir(folder / f"bert-{hidden}x{layers}", layers, hidden)
            results[name] = [r for b in args.batch
                             for r in measure(model_dir, csv, b, args.max_length, args.rounds,
                                              device)]  # fmt: skip
    text = page(results, args, device, time.perf_counter() - started)
    write_text_atomic(args.out, text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
