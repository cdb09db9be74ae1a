"""Training throughput (samples/s): dense vs DWF at D = 2, 3, 4; one process and 2-process DDP.

    python benchmarks/throughput.py                      # CPU: LeNet-5 on 1x28x28, batch 128
    python benchmarks/throughput.py --model resnet18 --batch 256 --device cuda   # + bf16 vs fp32

Each configuration runs `--warmup` optimizer steps, then times `--steps` steps (SGD, momentum,
weight decay) on fixed random data, so only the training step is measured; `--repeats` rounds
run interleaved and the best rate of each setting is kept. DDP runs use gloo on CPU with the
global batch split over the two processes.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import dwfc
from dwfc.engine.device import Precision
from dwfc.zoo import lenet5


def build(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
    if name == "lenet5":
        return lenet5(), (1, 28, 28), 10
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10), (3, 32, 32), 10


def _model(name: str, depth: int | None, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model, _, _ = build(name)
    if depth is not None:
        dwfc.factorize_(model, depth=depth)
    return model.to(device)


def samples_per_second(
    model: nn.Module, shape: tuple[int, ...], batch: int, steps: int, warmup: int,
    device: torch.device, precision: Precision, forward: nn.Module | None = None,
) -> float:  # fmt: skip
    forward = forward or model
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = precision.batch(torch.randn(batch, *shape, generator=g), device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        with precision.context(device):
            loss = F.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, depth: int | None,
                results: dict) -> None:  # fmt: skip
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    device = torch.device("cpu")
    model = _model(args.model, depth, device)
    ddp = nn.parallel.DistributedDataParallel(model)
    _, shape, _ = build(args.model)
    rate = samples_per_second(model, shape, args.batch // world, args.steps, args.warmup, device,
                              Precision(False, False), forward=ddp)  # fmt: skip
    if rank == 0:
        results[depth] = rate * world
    tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rates(args: argparse.Namespace, depths: list[int | None]) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        for depth in depths:
            mp.spawn(_ddp_worker, args=(2, _free_port(), args, depth, results), nprocs=2)
        return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", help="lenet5 or a torchvision model name")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best kept")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-process CPU runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    depths: list[int | None] = [None, 2, 3, 4]
    _, shape, _ = build(args.model)
    precisions = [("fp32", Precision(False, False))]
    if device.type == "cuda":
        conv = any(isinstance(m, nn.Conv2d) for m in build(args.model)[0].modules())
        precisions.append(("bf16", Precision(True, conv)))
    best: dict[tuple[str, int | None], float] = {}
    for _ in range(args.repeats):  # interleaved, so a burst of load hits every setting alike
        for label, precision in precisions:
            for depth in depths:
                model = _model(args.model, depth, device)
                rate = samples_per_second(model, shape, args.batch, args.steps, args.warmup,
                                          device, precision)  # fmt: skip
                key = (f"1 process, {label}", depth)
                best[key] = max(best.get(key, 0.0), rate)
    rows = [(setting, depth, rate) for (setting, depth), rate in best.items()]
    if device.type == "cpu" and not args.no_ddp:
        for depth, rate in sorted(ddp_rates(args, depths).items(), key=lambda kv: kv[0] or 0):
            rows.append(("2 processes DDP (gloo), fp32", depth, rate))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model}, batch {args.batch}, {args.steps} timed steps, {name}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")  # fmt: skip
    print(f"{'setting':32} {'model':10} {'samples/s':>10} {'vs dense':>9}")
    dense = {setting: rate for setting, depth, rate in rows if depth is None}
    for setting, depth, rate in rows:
        model = "dense" if depth is None else f"DWF D={depth}"
        print(f"{setting:32} {model:10} {rate:10.0f} {rate / dense[setting]:8.2f}x")


if __name__ == "__main__":
    main()
