"""Training overhead of DWF: step time, memory and operator calls against dense; subnormals;
file size.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py            # writes docs/overhead.md
    python benchmarks/overhead.py --device cuda --out docs/overhead-cuda.md
    bash benchmarks/gpu_check.sh                                # on a GPU machine, all of it

1. Time per optimisation step (SGD + momentum + weight decay, torch's fused SGD as the engine
   uses it) of the dense model and the same model factorized with D = 2, 3, 4 through
   `dwfc.factorize_`, each per weight (the parametrization alone), fused (`dwfc.fuse_`) and
   fused with compiled products (`dwfc.fuse_(compile=True)`, recipe `train.fused=compile`),
   measured side by side in interleaved rounds (median), for LeNet-5 (1x28x28), ResNet-20 and
   ResNet-18 (3x32x32), at each batch size asked for.
2. Peak training memory as a ratio: on CUDA `torch.cuda.max_memory_allocated` over one step; on
   CPU an exact account of what a step holds at its peak: parameters, gradients, momentum and
   the tensors autograd saves for the backward pass (distinct storages, parameters not twice).
3. Operator calls per step (torch.profiler, benchmarks/operator_calls.py): compute and metadata
   operators, and on CUDA the kernels launched, dense against every DWF variant.
4. Subnormals (CPU): a real DWF run of LeNet-300-100 (D = 3, target 0.95, the default recipe)
   with `train.flush_denormal` off and on: time per epoch over training, the subnormal factor
   entries at the end, and step time at that end state with flushing on and off.
5. File size: `model.safetensors` of compressed models against the information bound (4 bytes
   per non-zero value and per unpruned parameter, plus one bit per pruned-or-kept weight).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import dwfc  # noqa: E402
from benchmarks.operator_calls import operator_calls  # noqa: E402
from dwfc import inputs  # noqa: E402
from dwfc._atomic import write_text_atomic  # noqa: E402
from dwfc.engine.trainer import fused_sgd  # noqa: E402
from dwfc.inputs import Inputs  # noqa: E402
from dwfc.outputs import SAFETENSORS  # noqa: E402
from dwfc.report.schema import SparsityInfo  # noqa: E402
from dwfc.zoo import BasicBlock, lenet5  # noqa: E402

TINY = torch.finfo(torch.float32).tiny


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, 16/32/64 channels."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())  # fmt: skip
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet5": (lenet5, (1, 28, 28)), "resnet20": (ResNet20, (3, 32, 32)),
    "resnet18": (_resnet18, (3, 32, 32)),
}  # fmt: skip
Variant = tuple[int | None, str]  # (D or None for dense, one of MODES)
MODES = ("per weight", "fused", "compiled")
VARIANTS: tuple[Variant, ...] = ((None, "dense"), *((d, m) for d in (2, 3, 4) for m in MODES))
OPS_BATCH = 8  # operator calls do not depend on the batch size
MIN_ROUND_S = 0.3  # timed seconds per variant and round, at the least: short steps are noisy


def _label(variant: Variant) -> str:
    depth, mode = variant
    return "dense" if depth is None else f"D={depth} {mode}"


def _setup(name: str, variant: Variant, device: torch.device) -> tuple[nn.Module, Any]:
    depth, mode = variant
    torch.manual_seed(0)
    model = MODELS[name][0]()
    if depth is not None:
        dwfc.factorize_(model, depth=depth)
    model.to(device).train()
    if AMP["on"]:
        model.to(memory_format=torch.channels_last)
    if mode in ("fused", "compiled"):
        dwfc.fuse_(model, compile=mode == "compiled")
    opt = fused_sgd([{"params": list(model.parameters()), "weight_decay": 5e-4}], 0.01, 0.9)
    return model, opt


AMP = {"on": False}  # bf16 autocast + channels_last, as dwfc trains on CUDA (--amp)


def train_step(model: nn.Module, opt: Any, x: Inputs, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(y.device.type, torch.bfloat16, enabled=AMP["on"]):
        logits = inputs.call(model, x)
    F.cross_entropy(logits.float(), y).backward()
    opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accounted_bytes(model: nn.Module, opt: Any, x: Inputs, y: torch.Tensor) -> int:
    """Parameters + gradients + momentum + distinct tensors saved for backward, in bytes."""
    train_step(model, opt, x, y)  # momentum buffers exist from here on
    params = list(model.parameters())
    owned = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(inputs.call(model, x), y)
    loss.backward()
    state = sum(p.numel() * p.element_size() for p in params)
    momentum = sum(b.numel() * b.element_size() for s in opt.state.values()
                   for b in s.values() if isinstance(b, torch.Tensor))  # fmt: skip
    return 2 * state + momentum + sum(saved.values())


def cuda_peak(model: nn.Module, opt: Any, x: Inputs, y: torch.Tensor) -> int:
    train_step(model, opt, x, y)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, opt, x, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _batch(shape: tuple[int, ...], size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, *shape, generator=g).to(device)
    if AMP["on"]:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (size,), generator=g).to(device)


def _steps_for(setup: tuple[nn.Module, Any], x: torch.Tensor, y: torch.Tensor,
               device: torch.device, least: int) -> int:
    """Timed steps per round: at least `least`, and enough for about MIN_ROUND_S of dense."""
    train_step(*setup, x, y)
    sync(device)
    started = time.perf_counter()
    train_step(*setup, x, y)
    sync(device)
    return max(least, math.ceil(MIN_ROUND_S / max(time.perf_counter() - started, 1e-6)))


def step_overhead(device: torch.device, models: list[str], batches: list[int], steps: int,
                  rounds: int) -> list[dict[str, Any]]:  # fmt: skip
    """Median step time and peak memory of every variant, interleaved per round."""
    rows = []
    for name in models:
        shape = MODELS[name][1]
        setups = _setups(name, device)
        variants = list(setups)
        for size in batches:
            x, y = _batch(shape, size, device)
            measure = cuda_peak if device.type == "cuda" else accounted_bytes
            memory = {v: measure(*setups[v], x, y) for v in variants}
            times: dict[Variant, list[float]] = {v: [] for v in variants}
            steps_here = _steps_for(setups[VARIANTS[0]], x, y, device, steps)
            for _ in range(rounds):
                for v in variants:
                    model, opt = setups[v]
                    train_step(model, opt, x, y)  # warm-up within the round
                    sync(device)
                    started = time.perf_counter()
                    for _ in range(steps_here):
                        train_step(model, opt, x, y)
                    sync(device)
                    times[v].append((time.perf_counter() - started) / steps_here)
            dense_t, dense_m = statistics.median(times[VARIANTS[0]]), memory[VARIANTS[0]]
            for v in variants:
                t = statistics.median(times[v])
                rows.append({"model": name, "batch": size, "variant": _label(v), "depth": v[0],
                             "mode": v[1], "step_ms": 1000 * t, "time_ratio": t / dense_t,
                             "memory_mb": memory[v] / 2**20,
                             "memory_ratio": memory[v] / dense_m})  # fmt: skip
            print(f"{name} b{size}: " + ", ".join(
                f"{r['variant']} {r['step_ms']:.1f} ms x{r['time_ratio']:.2f} "
                f"mem x{r['memory_ratio']:.2f}" for r in rows[-len(variants):]), flush=True)
    return rows


COMPILE_ERRORS: list[str] = []  # why the compiled variants were left out, if they were


def _setups(name: str, device: torch.device) -> dict[Variant, tuple[nn.Module, Any]]:
    """Every variant's model and optimizer; the compiled ones left out (and the reason kept)
    where torch.compile cannot run here."""
    setups = {}
    for v in VARIANTS:
        try:
            setups[v] = _setup(name, v, device)
        except dwfc.InputError as exc:
            if v[1] != "compiled":
                raise
            if str(exc) not in COMPILE_ERRORS:
                COMPILE_ERRORS.append(str(exc))
                print(f"left out: {exc}", flush=True)
    return setups


def operator_counts(device: torch.device, models: list[str]) -> list[dict[str, Any]]:
    """Operator calls (and CUDA kernels) of one training step of every variant."""
    rows = []
    for name in models:
        x, y = _batch(MODELS[name][1], OPS_BATCH, device)
        for v, (model, opt) in _setups(name, device).items():
            train_step(model, opt, x, y)
            calls = operator_calls(partial(train_step, model, opt, x, y), device)
            weights = sum(1 for _ in dwfc.factorized_weights(model)) or None
            rows.append({"model": name, "variant": _label(v), "weights": weights,
                         "compute": calls.compute, "metadata": calls.metadata,
                         "kernels": calls.kernels})  # fmt: skip
        print(f"{name} operator calls: " + ", ".join(
            f"{r['variant']} {r['compute']}+{r['metadata']}" for r in rows
            if r["model"] == name),
            flush=True)  # fmt: skip
    return rows


def _dense_lenet300(folder: Path) -> Path:
    from benchmarks.bench_data import pretrain

    return pretrain("lenet300", "test", folder)


def subnormals(cache: Path, epochs: int) -> dict[str, Any]:
    """A real DWF run with flushing off then on: epoch times, subnormals, end-state step times."""
    from torch.utils.data import DataLoader

    from dwfc.config import load_recipe
    from dwfc.data import mnist5k
    from dwfc.engine.trainer import train as train_method
    from dwfc.zoo import lenet_300_100

    dense = torch.load(_dense_lenet300(cache), weights_only=True)
    train, test = mnist5k()
    out: dict[str, Any] = {"epochs": epochs}
    for flush in (False, True):
        recipe = load_recipe("default", [f"train.flush_denormal={str(flush).lower()}",
                                         f"train.epochs={epochs}", "sparsity.finetune_epochs=0",
                                         "sparsity.target=0.95", "factorize.depth=3",
                                         "train.device=cpu"])  # fmt: skip
        model = lenet_300_100()
        model.load_state_dict(dense)
        dwfc.factorize_(model, depth=3)
        loader = DataLoader(train, batch_size=128, shuffle=True,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        stamps = [time.perf_counter()]

        def stamp(event: str, info: dict[str, Any], stamps: list[float] = stamps) -> None:
            if event == "eval":
                stamps.append(time.perf_counter())

        names = [fw.name for fw in dwfc.factorized_weights(model)]
        train_method(model, names, loader, DataLoader(test, batch_size=1000), recipe,
                     torch.device("cpu"), stamp)  # fmt: skip
        epoch_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        factors = [f.detach() for fw in dwfc.factorized_weights(model) for f in fw.factors]
        sub = sum(int(((f != 0) & (f.abs() < TINY)).sum()) for f in factors)
        key = "flush_on" if flush else "flush_off"
        out[key] = {"first_epochs_s": statistics.fmean(epoch_s[:3]),
                    "last_epochs_s": statistics.fmean(epoch_s[-3:]), "total_s": sum(epoch_s),
                    "subnormal_factor_entries": sub,
                    "factor_entries": sum(f.numel() for f in factors)}  # fmt: skip
        if not flush:  # step times at the end state of the unflushed run, flushing off and on
            x, y = next(iter(loader))
            out["end_state_step_ms"] = _flush_times(model, x, y)
            _make_subnormal(model, 0.95)
            out["synthetic_step_ms"] = _flush_times(model, x, y)
            out["matmul_s"] = _matmul_micro()
        print(f"subnormals {key}: {out[key]}", flush=True)
    return out


def _flush_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Median step time (ms) with subnormal flushing off and on, interleaved, lr 0 (no drift)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(5):
        for mode in (False, True):
            torch.set_flush_denormal(mode)
            started = time.perf_counter()
            for _ in range(5):
                train_step(model, opt, x, y)
            times[mode].append((time.perf_counter() - started) / 5)
    torch.set_flush_denormal(False)
    return {"off": 1000 * statistics.median(times[False]),
            "on": 1000 * statistics.median(times[True])}  # fmt: skip


def _matmul_micro() -> dict[str, float]:
    """Seconds for 5 products of a 512x512 subnormal matrix with a normal one, off and on."""
    a, b = torch.full((512, 512), 1e-39), torch.randn(512, 512, generator=torch.Generator())
    out = {}
    for mode in (False, True):
        torch.set_flush_denormal(mode)
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        out["on" if mode else "off"] = time.perf_counter() - started
    torch.set_flush_denormal(False)
    return out


def _make_subnormal(model: nn.Module, fraction: float) -> None:
    """Worst case: the smallest `fraction` of weights become subnormal (|w| = 1e-39), each of
    their D factors at 1e-39^(1/D): the state a collapsing weight passes through."""
    from dwfc.sparsity import collapsed_weights, global_magnitude_masks

    masks = global_magnitude_masks(collapsed_weights(model), fraction)
    with torch.no_grad():
        for fw in dwfc.factorized_weights(model):
            pruned = ~masks[fw.name]
            size = 1e-39 ** (1.0 / fw.parametrization.depth)
            for f in fw.factors:
                f[pruned] = torch.where(f[pruned] < 0, -size, size)


def file_sizes(cache: Path) -> list[dict[str, Any]]:
    """Compress LeNet-300-100 and LeNet-5 (one-shot, 1 epoch: sizes do not depend on training)."""
    from benchmarks.bench_data import MODELS as ZOO
    from benchmarks.bench_data import pretrain

    rows = []
    for model in ("lenet300", "lenet5"):
        dense = pretrain(model, "test", cache)
        for sparsity in (0.9, 0.95, 0.99):
            recipe = dwfc.load_recipe("default", [
                f"model.arch={ZOO[model]}", "sparsity.method=oneshot",
                f"sparsity.target={sparsity}", "train.epochs=1", "sparsity.finetune_epochs=0",
                "export.onnx=false", "train.checkpoint=false", "train.device=cpu"])  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                report = dwfc.compress(dense, Path(tmp) / "out", recipe)
                path = Path(tmp) / "out" / SAFETENSORS
                size = path.stat().st_size
                header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
            sp = report.sparsity or SparsityInfo()
            nonzero, dense_rest = sp.nonzero_weights or 0, sp.unfactorized_parameters or 0
            bound = 4 * (nonzero + dense_rest) + (sp.factorized_weights or 0) / 8
            rows.append({"model": model, "sparsity": sparsity, "bytes": size, "header": header,
                         "bound": bound, "dense": 4 * (sp.total_parameters or 0)})  # fmt: skip
    return rows


FLOOR_BYTES_DOC = (
    "Extra bytes DWF must move per step, fp32, per factorized weight entry: the optimizer over "
    "D - 1 more tensors (fused SGD reads parameter, gradient and momentum and writes parameter "
    "and momentum: 20 bytes each), the product forward (reads D factors, writes w: 4 (D + 1)) "
    "and its backward (reads the gradient of w and D factors, writes D gradients: "
    "4 (2D + 1)); 32 D - 12 bytes in all, whatever the kernels, fused or compiled.")


def extra_bytes(depth: int, entries: int) -> int:
    """The least memory traffic DWF at `depth` adds to a step (FLOOR_BYTES_DOC)."""
    return (32 * depth - 12) * entries


def bandwidth(device: torch.device, elements: int = 2**24) -> float:
    """Bytes per second that torch's fused SGD step moves here (20 bytes per parameter): the
    rate the optimizer, and at best the products, stream memory at."""
    param = torch.zeros(elements, device=device, requires_grad=True)
    param.grad = torch.ones_like(param)
    opt = fused_sgd([{"params": [param], "weight_decay": 5e-4}], 0.01, 0.9)
    times = []
    for _ in range(12):
        sync(device)
        started = time.perf_counter()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - started)
    return 20 * elements / statistics.median(times[2:])


def traffic_floor(device: torch.device, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, batch, D): the step time DWF cannot go below, dense time plus its extra
    traffic at the measured bandwidth, against the best measured variant."""
    rate = bandwidth(device)
    entries = {}
    for name in {r["model"] for r in steps}:
        model = MODELS[name][0]()
        dwfc.factorize_(model, depth=2)
        entries[name] = sum(fw.factors[0].numel() for fw in dwfc.factorized_weights(model))
    rows = []
    for dense in (r for r in steps if r["depth"] is None):
        for depth in sorted({r["depth"] for r in steps if r["depth"] is not None}):
            same = [r for r in steps if r["model"] == dense["model"]
                    and r["batch"] == dense["batch"] and r["depth"] == depth]  # fmt: skip
            floor_ms = 1000 * extra_bytes(depth, entries[dense["model"]]) / rate
            best = min(same, key=lambda r: r["step_ms"])
            rows.append({"model": dense["model"], "batch": dense["batch"], "depth": depth,
                         "entries": entries[dense["model"]], "dense_ms": dense["step_ms"],
                         "floor_ms": floor_ms, "bandwidth_gbs": rate / 1e9,
                         "floor_ratio": 1 + floor_ms / dense["step_ms"],
                         "best_mode": best["mode"], "best_ratio": best["time_ratio"]})
    return rows


def _floor_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | batch | D | factorized entries | dense step (ms) | extra traffic (MB) "
             "| floor (ms) | floor vs dense | best measured (variant) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mb = extra_bytes(r["depth"], r["entries"]) / 1e6
        lines.append(f"| {r['model']} | {r['batch']} | {r['depth']} | {r['entries']:,} | "
                     f"{r['dense_ms']:.1f} | {mb:.0f} | {r['floor_ms']:.1f} | "
                     f"{r['floor_ratio']:.3f}x | {r['best_ratio']:.2f}x ({r['best_mode']}) |")
    return lines


def _load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load unknown"


GOALS = ("Goals (issue 15), at D = 3: at most 1.10x dense step time on a GPU (fp32 and bf16), "
         "1.05x on the CPU; peak memory at most 1.3x dense on the GPU; compute operator calls "
         "per step at most dense plus a constant independent of the number of layers.")


def _step_table(steps: list[dict[str, Any]]) -> list[str]:
    head = " | ".join(f"{m}: step (ms) | vs dense | memory vs dense" for m in MODES)
    lines = [f"| model | batch | D | {head} |", "| --- | --- | --- |" + " --- | --- | --- |" * 3]
    for r in steps:
        if r["depth"] is None:
            lines.append(f"| {r['model']} | {r['batch']} | dense | {r['step_ms']:.1f} | 1.00x | "
                         f"1.00x ({r['memory_mb']:.1f} MiB) |" + " | | |" * 2)
        elif r["mode"] == MODES[0]:
            cells = []
            for mode in MODES:
                found = [f for f in steps if f["mode"] == mode and f["depth"] == r["depth"]
                         and f["model"] == r["model"] and f["batch"] == r["batch"]]  # fmt: skip
                cells.append(" | | " if not found else
                             f"{found[0]['step_ms']:.1f} | {found[0]['time_ratio']:.2f}x | "
                             f"{found[0]['memory_ratio']:.2f}x")  # fmt: skip
            lines.append(f"| {r['model']} | {r['batch']} | {r['depth']} | "
                         + " | ".join(cells) + " |")
    return lines


def _ops_table(ops: list[dict[str, Any]]) -> list[str]:
    cuda = any(r["kernels"] is not None for r in ops)
    lines = ["| model | factorized weights | variant | compute calls | extra vs dense | "
             "metadata calls |" + (" CUDA kernels | extra vs dense |" if cuda else ""),
             "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if cuda else "")]
    for r in ops:
        dense = next(d for d in ops if d["model"] == r["model"] and d["variant"] == "dense")
        line = (f"| {r['model']} | {r['weights'] or ''} | {r['variant']} | {r['compute']} | "
                f"{r['compute'] - dense['compute']:+d} | {r['metadata']} |")
        if cuda:
            line += f" {r['kernels']} | {r['kernels'] - dense['kernels']:+d} |"
        lines.append(line)
    return lines


def render(device: torch.device, steps: list[dict[str, Any]], floor: list[dict[str, Any]],
           ops: list[dict[str, Any]] | None, sub: dict[str, Any] | None,
           files: list[dict[str, Any]] | None, command: str) -> str:  # fmt: skip
    dev = (torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"CPU, {torch.get_num_threads()} thread(s)")  # fmt: skip
    if AMP["on"]:
        dev += ", bf16 autocast + channels_last"
    memory_how = ("torch.cuda.max_memory_allocated over one step" if device.type == "cuda" else
                  "parameters + gradients + momentum + tensors saved for backward")  # fmt: skip
    lines = [f"# Training overhead of DWF ({dev})", "",
             "Time per optimisation step (SGD + momentum + weight decay in torch's fused SGD, as "
             "the engine runs it; median of interleaved rounds) and peak training memory "
             f"({memory_how}), dense against the same model factorized by `dwfc.factorize_`: "
             "per weight (each weight multiplied out by its parametrization, `train.fused=false`), "
             "fused (`dwfc.fuse_`, the default in training) and compiled (the fused products by "
             "torch.compile, `train.fused=compile`). " + GOALS,
             *(["", f"Compiled variants left out: {'; '.join(COMPILE_ERRORS)}"]
               if COMPILE_ERRORS else []),
             "", *([f"Measured on a CPU shared with other jobs ({_load()}): step times are "
                    "noisy even as medians of interleaved rounds. Unshared CPU and CUDA numbers: "
                    "[overhead-gpu.md](overhead-gpu.md).", ""] if device.type == "cpu" else []),
             *_step_table(steps)]  # fmt: skip
    lines += ["", "## The floor: memory traffic", "", FLOOR_BYTES_DOC + " At the bandwidth "
              f"torch's fused SGD streams at here ({floor[0]['bandwidth_gbs']:.1f} GB/s, "
              "measured in this run), that traffic alone puts DWF's step at least this far "
              "above dense; a goal below the floor cannot be met on this machine by any kernel "
              "that keeps fp32 factors and their momentum.", "", *_floor_table(floor)]
    if ops:
        lines += ["", "## Operator calls per training step", "",
                  f"torch.profiler over one step at batch {OPS_BATCH} (the counts do not depend "
                  "on it): aten operators called at the top level, *compute* if they do any "
                  "work, *metadata* if they only make views (no kernel, no data moved; "
                  "benchmarks/operator_calls.py)" +
                  (", and the CUDA kernels launched." if device.type == "cuda" else ".") +
                  " A compiled variant's generated loops are not aten operators: the profiler "
                  "does not count them as calls" +
                  ("; the CUDA kernels column does." if device.type == "cuda" else "."), "",
                  *_ops_table(ops)]  # fmt: skip
    if sub is not None:
        off, on = sub["flush_off"], sub["flush_on"]
        end = sub["end_state_step_ms"]
        lines += ["", "## Subnormals on CPU", "",
                  f"A real DWF run of LeNet-300-100 (D = 3, target 0.95, default recipe, "
                  f"{sub['epochs']} epochs, no fine-tune), once with `train.flush_denormal=false` "
                  "and once with true:", "",
                  "| flush | first 3 epochs (s/epoch) | last 3 epochs (s/epoch) | total (s) | "
                  "subnormal factor entries at the end |", "| --- | --- | --- | --- | --- |"]
        for label, r in (("off", off), ("on", on)):
            lines.append(f"| {label} | {r['first_epochs_s']:.2f} | {r['last_epochs_s']:.2f} | "
                         f"{r['total_s']:.1f} | {r['subnormal_factor_entries']:,} of "
                         f"{r['factor_entries']:,} |")
        syn = sub["synthetic_step_ms"]
        lines += ["", f"Step time at the end state of the unflushed run: {end['off']:.1f} ms "
                  f"with flushing off, {end['on']:.1f} ms with it on "
                  f"({end['off'] / end['on']:.2f}x). Worst case, the same model with its 95% "
                  f"smallest weights made subnormal (|w| = 1e-39, factors 1e-13): "
                  f"{syn['off']:.1f} ms off, {syn['on']:.1f} ms on "
                  f"({syn['off'] / syn['on']:.2f}x). For scale, 5 products of a 512x512 "
                  f"matrix of subnormals with a normal one: {sub['matmul_s']['off']:.2f} s "
                  f"off, {sub['matmul_s']['on']:.3f} s on."]  # fmt: skip
    if files:
        lines += ["", "## Sparse file size against the information bound", "",
                  "Bound: 4 bytes per non-zero pruned-set weight and per unpruned parameter "
                  "(biases), plus one bit per pruned-set weight (the mask). The file also holds "
                  "a JSON header (with the recipe as metadata) and per-row offsets.", "",
                  "| model | sparsity | file (bytes) | header | bound | file / bound "
                  "| (file - header) / bound | dense fp32 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in files:
            lines.append(f"| {r['model']} | {r['sparsity']} | {r['bytes']:,} | {r['header']:,} | "
                         f"{r['bound']:,.0f} | {r['bytes'] / r['bound']:.2f}x | "
                         f"{(r['bytes'] - r['header']) / r['bound']:.2f}x | {r['dense']:,} |")
    lines += ["", "Reproduce:", "", "```", command, "```", "",
              f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
              f"torch {torch.__version__}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[128, 256])
    p.add_argument("--steps", type=int, default=3, help="timed steps per round, at the least")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--subnormal-epochs", type=int, default=30)
    p.add_argument("--skip", nargs="*", default=[], choices=["ops", "subnormals", "files"])
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "overhead.md")
    args = p.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + \
        "python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    AMP["on"] = args.amp
    steps = step_overhead(device, args.models, args.batch, args.steps, args.rounds)
    floor = traffic_floor(device, steps)
    ops = operator_counts(device, args.models) if "ops" not in args.skip else None
    cpu = device.type == "cpu"
    sub = subnormals(args.cache, args.subnormal_epochs) if cpu and "subnormals" not in args.skip \
        else None  # fmt: skip
    files = file_sizes(args.cache) if cpu and "files" not in args.skip else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, render(device, steps, floor, ops, sub, files, command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
