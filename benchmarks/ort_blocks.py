"""What onnxruntime's CPU convolutions cost as output channels are removed, and why LeNet-5
cannot speed up as its MACs fall.

    python benchmarks/ort_blocks.py            # writes docs/results-ort-blocks.md

1. One 3x3 convolution (48 input channels, 16x16, batch 64, one thread) exported with every
   output-channel count from 4 to 64: its median time against the count. onnxruntime's CPU
   kernels (MLAS, NCHWc layout) compute output channels in blocks (8 with AVX2, 16 with
   AVX-512), so the time is a staircase: a layer pruned to 24 channels costs what 32 cost.
2. LeNet-5 dense (6, 16, 120, 84) against LeNet-5 shrunk to (2, 6, 40, 30) (about 10x fewer
   MACs), batch 64, one thread: total time and onnxruntime's own per-operator profile. The first
   convolution (one input channel) keeps the cost of a full block of output channels whatever
   is removed, which bounds the speed-up of any channel pruning of the model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.bench_report import _machine  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.export.latency import onnxruntime_version  # noqa: E402
from dwfc.export.runtime import ort_session  # noqa: E402
from dwfc.structure.macs import count_macs  # noqa: E402

BATCH = 64
CONV_INPUT = (48, 16, 16)
CHANNELS = range(4, 65, 4)
LENETS = {"dense": (6, 16, 120, 84), "shrunk": (2, 6, 40, 30)}


def lenet(c1: int, c2: int, f1: int, f2: int) -> nn.Module:
    """LeNet-5 (dwfc.zoo's layout) with the given channel and neuron counts."""
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * 25, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(), nn.Linear(f2, 10),
    ).eval()  # fmt: skip


def export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"])  # fmt: skip
    return path


def median_ms(session: object, x: np.ndarray, rounds: int) -> float:
    """Median over `rounds` of the mean time of enough runs to take about 20 ms."""
    feed = {"x": x}
    session.run(None, feed)  # type: ignore[attr-defined]
    started = time.perf_counter()
    session.run(None, feed)  # type: ignore[attr-defined]
    repeats = max(1, round(0.02 / max(time.perf_counter() - started, 1e-6)))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            session.run(None, feed)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) / repeats)
    return 1000 * statistics.median(times)


def conv_staircase(folder: Path, rounds: int) -> list[tuple[int, float]]:
    x = torch.randn(BATCH, *CONV_INPUT)
    rows = []
    for channels in CHANNELS:
        conv = nn.Sequential(nn.Conv2d(CONV_INPUT[0], channels, 3, padding=1), nn.ReLU()).eval()
        path = export(conv, x, folder / f"conv{channels}.onnx")
        rows.append((channels, median_ms(ort_session(path, 1, spin=False), x.numpy(), rounds)))
        print(f"conv {CONV_INPUT[0]}->{channels}: {rows[-1][1]:.2f} ms", flush=True)
    return rows


def profile(path: Path, x: np.ndarray, runs: int) -> dict[str, float]:
    """Microseconds per run of each operator, from onnxruntime's own profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"x": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = f"{e['args']['op_name']} {e['name'].removesuffix('_kernel_time')}"
            per_op[name] = per_op.get(name, 0.0) + e["dur"] / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def lenets(folder: Path, rounds: int) -> dict[str, dict]:
    x = torch.randn(BATCH, 1, 28, 28)
    out = {}
    for label, widths in LENETS.items():
        model = lenet(*widths)
        path = export(model, x, folder / f"lenet5_{label}.onnx")
        out[label] = {
            "widths": widths, "macs": count_macs(model, x[:1])[0],
            "ms": median_ms(ort_session(path, 1, spin=False), x.numpy(), rounds),
            "ops": profile(path, x.numpy(), 200),
        }  # fmt: skip
        print(f"lenet5 {label} {widths}: {out[label]['ms']:.3f} ms", flush=True)
    return out


def render(stairs: list[tuple[int, float]], nets: dict[str, dict], command: str) -> str:
    lines = [
        "# onnxruntime's CPU convolutions: output channels come in blocks", "",
        "<!-- Written by benchmarks/ort_blocks.py. -->", "",
        f"Command: `{command}`. Machine: {_machine()}; onnxruntime {onnxruntime_version()}. "
        f"Batch {BATCH}, one thread; each time is the median over rounds of the mean of "
        "repeated runs (this shared machine's timings move by several percent between runs).",
        "",
        f"## One 3x3 convolution, {CONV_INPUT[0]} input channels, "
        f"{CONV_INPUT[1]}x{CONV_INPUT[2]}", "",
        "| output channels | time (ms) | time per channel (us) |", "| --- | --- | --- |",
    ]  # fmt: skip
    lines += [f"| {c} | {ms:.2f} | {1000 * ms / c:.0f} |" for c, ms in stairs]
    lines += ["", "## LeNet-5, dense against shrunk", ""]
    dense, shrunk = nets["dense"], nets["shrunk"]
    lines += [
        "| model | channels and neurons | MACs per image | time (ms) | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, net in nets.items():
        lines.append(f"| {label} | {', '.join(map(str, net['widths']))} | {net['macs']:,} | "
                     f"{net['ms']:.3f} | {dense['ms'] / net['ms']:.2f}x |")  # fmt: skip
    lines += ["", "onnxruntime's profile (microseconds per run, one thread):", "",
              "| operator | dense | shrunk |", "| --- | --- | --- |"]  # fmt: skip
    for op in dense["ops"]:
        lines.append(f"| {op} | {dense['ops'][op]:.1f} | {shrunk['ops'].get(op, 0.0):.1f} |")
    first = next(op for op in dense["ops"] if op.startswith("Conv"))
    floor = shrunk["ops"].get(first, 0.0) / 1000
    lines += [
        "", f"MAC speed-up of the shrunk model {dense['macs'] / shrunk['macs']:.1f}x, measured "
        f"{dense['ms'] / shrunk['ms']:.2f}x. Its first convolution ({first.split()[0]}, one input "
        f"channel) alone takes {floor:.3f} ms: no channel pruning of LeNet-5 that keeps a "
        f"channel of it can run faster than {dense['ms'] / floor:.2f}x here.", "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results-ort-blocks.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        stairs = conv_staircase(Path(tmp), args.rounds)
        nets = lenets(Path(tmp), args.rounds)
    command = "python benchmarks/ort_blocks.py" + " ".join([""] + (argv or sys.argv[1:]))
    write_text_atomic(args.out, render(stairs, nets, command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
