"""onnxruntime latency of the original and compressed models, measured side by side.

Every (batch, threads) setting is timed in interleaved rounds: each round runs every model once
in turn, in an order that rotates from round to round, so that load on the machine and the order
touch all of them alike. Sessions do not spin their idle threads (a spinning pool of one session
would slow the next). A measurement repeats the run until it takes about `MIN_MEASURE_S` (small
models finish in microseconds); the report gives the median over rounds and the quartiles. The
inputs are evaluation samples, repeated to the batch size, in the model's own input dtype.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dwfc import inputs
from dwfc.export.runtime import ort_session
from dwfc.inputs import Inputs

MIN_MEASURE_S = 0.02
MAX_REPEATS = 200
THREADS = (1, 0)  # one thread, and onnxruntime's default (one per physical core)


@dataclass
class LatencyRow:
    model: str  # "original", "compressed", "sparse", "int8"
    batch: int
    threads: int  # intra-op threads; 0 is onnxruntime's default, one per physical core
    median_ms: float
    q1_ms: float
    q3_ms: float


def cpuinfo(field: str) -> str | None:
    """The first value of `field` ("model name", "flags") in /proc/cpuinfo; None off Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform says."""
    return cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def _repeats(session: object, feed: dict[str, np.ndarray]) -> int:
    session.run(None, feed)  # type: ignore[attr-defined]  # warm-up
    started = time.perf_counter()
    session.run(None, feed)  # type: ignore[attr-defined]
    once = max(time.perf_counter() - started, 1e-6)
    return max(1, min(MAX_REPEATS, round(MIN_MEASURE_S / once)))


def measure_latency(
    models: Mapping[str, os.PathLike[str] | str], samples: Inputs,
    batches: Sequence[int], rounds: int,
) -> list[LatencyRow]:  # fmt: skip
    """Latency rows for every model, batch size and thread setting (`THREADS`), on inputs
    drawn from `samples` (a batch of real inputs).

    Example:
        rows = measure_latency({"compressed": "out/model.onnx"}, x_eval, [1, 64], 5)
    """
    rows = []
    for threads in THREADS:
        sessions = {label: ort_session(path, threads, spin=False)
                    for label, path in models.items()}  # fmt: skip
        labels = list(sessions)
        for batch in batches:
            x = inputs.repeat_to(samples, batch)
            feeds = {label: inputs.feed(s, x) for label, s in sessions.items()}
            repeats = {label: _repeats(s, feeds[label]) for label, s in sessions.items()}
            times: dict[str, list[float]] = {label: [] for label in labels}
            for r in range(rounds):
                for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                    session, feed = sessions[label], feeds[label]
                    started = time.perf_counter()
                    for _ in range(repeats[label]):
                        session.run(None, feed)
                    times[label].append((time.perf_counter() - started) / repeats[label])
            for label in labels:
                ms = sorted(1000 * t for t in times[label])
                quartiles = (statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1
                             else [ms[0]] * 3)  # fmt: skip
                rows.append(LatencyRow(label, batch, threads, statistics.median(ms),
                                       quartiles[0], quartiles[2]))  # fmt: skip
    return rows


def onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def cores() -> int:
    return os.cpu_count() or 1
