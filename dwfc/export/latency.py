"""onnxruntime latency of the original and compressed models, measured side by side.

Every (batch, threads) setting is timed in interleaved rounds: each round runs every model once
in turn, so load on the machine touches all of them alike. A measurement repeats the run until it
takes about `MIN_MEASURE_S` (small models finish in microseconds); the report gives the median
over rounds and the quartiles.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dwfc.export.runtime import ort_session

MIN_MEASURE_S = 0.02
MAX_REPEATS = 200
THREADS = (1, 0)  # one thread, and onnxruntime's default (all cores)


@dataclass
class LatencyRow:
    model: str  # "original", "compressed", "sparse", "int8"
    batch: int
    threads: int  # intra-op threads; 0 is onnxruntime's default, all cores
    median_ms: float
    q1_ms: float
    q3_ms: float


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform says."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 - read once
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _repeats(session: object, feed: dict[str, np.ndarray]) -> int:
    started = time.perf_counter()
    session.run(None, feed)  # type: ignore[attr-defined]  # also the warm-up
    once = max(time.perf_counter() - started, 1e-6)
    return max(1, min(MAX_REPEATS, round(MIN_MEASURE_S / once)))


def measure_latency(
    models: Mapping[str, os.PathLike[str] | str], sample_shape: Sequence[int],
    batches: Sequence[int], rounds: int,
) -> list[LatencyRow]:  # fmt: skip
    """Latency rows for every model, batch size and thread setting (`THREADS`).

    Example:
        rows = measure_latency({"compressed": "out/model.onnx"}, (1, 28, 28), [1, 64], 5)
    """
    rows = []
    generator = torch.Generator().manual_seed(0)
    for threads in THREADS:
        sessions = {label: ort_session(path, threads) for label, path in models.items()}
        for batch in batches:
            x = torch.randn(batch, *sample_shape, generator=generator).numpy()
            feeds = {label: {s.get_inputs()[0].name: x} for label, s in sessions.items()}
            repeats = {label: _repeats(s, feeds[label]) for label, s in sessions.items()}
            times: dict[str, list[float]] = {label: [] for label in sessions}
            for _ in range(rounds):
                for label, session in sessions.items():
                    started = time.perf_counter()
                    for _ in range(repeats[label]):
                        session.run(None, feeds[label])
                    times[label].append((time.perf_counter() - started) / repeats[label])
            for label, seconds in times.items():
                ms = sorted(1000 * t for t in seconds)
                quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
                rows.append(LatencyRow(label, batch, threads, statistics.median(ms),
                                       quartiles[0], quartiles[2]))  # fmt: skip
    return rows


def onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def cores() -> int:
    return os.cpu_count() or 1
