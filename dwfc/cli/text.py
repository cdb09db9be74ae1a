"""Text the CLI prints: library messages in the command line's terms, and the plain-text tables
of `plan`, `inspect` and `verify`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from dwfc.cli.options import FLAG_KEYS, PREFIX_FLAGS
from dwfc.errors import KEY_MARK, DwfcError
from dwfc.outputs import (
    HF_MODEL,
    LAYER_PLOT,
    MODEL_FILES,
    RECIPE,
    REPORT_JSON,
    REPORT_MD,
    TRAINING_PLOT,
)
from dwfc.report.format import threads
from dwfc.report.schema import AccuracyInfo, LatencyInfo, RunReport, SparsityInfo, StructureInfo
from dwfc.select import PlannedWeight, plan_summary

_NAMED = re.compile(f"{KEY_MARK}([^{KEY_MARK}]*){KEY_MARK}")
_FLAG_OF = {key: flag for flag, key in FLAG_KEYS.items()}


def for_cli(error: BaseException | str) -> str:
    """A library message as the command line shows it: each recipe key or `compress` argument it
    names (`dwfc.errors.named`) as its flag, where it has one.

    Example:
        for_cli(InputError(f"{named('data.source')} cifar10 needs {named('data.root')}"))
        # '--data cifar10 needs --data-root'
    """
    text = error.marked() if isinstance(error, DwfcError) else str(error)
    return _NAMED.sub(lambda m: _flag(m.group(1)), text)


def _flag(key: str) -> str:
    if key in _FLAG_OF:
        return _FLAG_OF[key]
    prefix = next((p for p in PREFIX_FLAGS if key.startswith(p)), None)
    return PREFIX_FLAGS[prefix] + key[len(prefix):] if prefix else key


def compress_summary(report: RunReport, out_dir: str) -> list[str]:
    """The lines `dwfc compress` prints after a run: sparsity, accuracy, where the outputs are."""
    sp, acc = report.sparsity or SparsityInfo(), report.accuracy or AccuracyInfo()
    if report.structure is not None:
        line = structure_line(report.structure)
    else:
        line = f"sparsity {sp.achieved:.2%} (target {sp.target:.2%})"
        line += f", CR {sp.compression_ratio:.1f}x"
    if sp.reached_by_training_controlled is not None:
        line += (
            f"; training alone brought {sp.reached_by_training_controlled:.2%} of the weights "
            f"under {sp.control_threshold:g}x their layer's RMS"
        )
    if sp.largest_cut_relative is not None:
        line += f"; the cut removed none larger than {sp.largest_cut_relative:.3g}x"
    ort, int8 = acc.compressed_onnxruntime, acc.compressed_int8
    written = [name for name in MODEL_FILES if name in report.files]
    lines = [
        line,
        f"accuracy {acc.original:.2%} -> {acc.compressed_pytorch:.2%} (PyTorch)"
        + (f", {ort:.2%} (onnxruntime)" if ort is not None else "")
        + (f", {int8:.2%} (int8)" if int8 is not None else ""),
    ]
    latency = latency_line(report)
    if latency:
        lines.append(latency)
    others = [REPORT_MD, REPORT_JSON, LAYER_PLOT, TRAINING_PLOT, RECIPE]
    if (Path(out_dir) / HF_MODEL).is_dir():
        others.insert(0, f"{HF_MODEL}/")
    lines.append(f"outputs in {out_dir}/: {', '.join([*written, *others])}")
    return lines


def structure_line(st: StructureInfo) -> str:
    """'MAC speed-up 3.15x (target 3x): 435,850 -> 138,123 MACs, 61,706 -> 8,495 parameters'."""
    line = (f"MAC speed-up {st.speedup:.2f}x (target {st.target_speedup:g}x): "
            f"{st.dense_macs:,} -> {st.macs:,} MACs, {st.dense_parameters:,} -> "
            f"{st.parameters:,} parameters, {st.channels_removed} of {st.channels} "
            "channels removed")  # fmt: skip
    if st.reached_by_training_controlled is not None:
        line += (f"; training alone made channels worth {st.reached_by_training_controlled:.2f}x "
                 "negligible")  # fmt: skip
    return line


def latency_line(report: RunReport) -> str:
    """'latency (onnxruntime, batch 64, 1 thread): original 1.2 ms, compressed 0.9 ms (1.3x)'."""
    latency = report.latency
    rows = latency.rows if latency else []
    batch = max((r.batch or 0 for r in rows), default=0)
    chosen = [r for r in rows if r.batch == batch and r.threads == 1 and r.median_ms]
    if latency is None or not chosen:
        return ""
    parts = [f"{r.model} {r.median_ms:.3g} ms"
             + (f" ({latency.speedup(r):.2f}x)" if latency.speedup(r) else "")
             for r in chosen]  # fmt: skip
    return f"latency (onnxruntime, batch {batch}, 1 thread): " + ", ".join(parts)


def _aligned(rows: list[tuple[str, ...]], right: set[int], rules: tuple[int, ...]) -> list[str]:
    """Rows as space-aligned columns (`right`: right-aligned ones), with a dashed rule before
    each row index in `rules`."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i in right else c.ljust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]  # fmt: skip
    rule = "  ".join("-" * w for w in widths)
    for index in sorted(rules, reverse=True):
        lines.insert(index, rule)
    return lines


def format_plan(planned: list[PlannedWeight], model: nn.Module) -> str:
    """A plain-text table of the plan (name, type, shape, weights, depth) with totals.

    Example:
        print(format_plan(plan(model, FactorizeConfig()), model))
    """
    rows = [("name", "type", "shape", "weights", "depth")]
    for pw in planned:
        name = pw.name + (f" (= {', '.join(pw.aliases)})" if pw.aliases else "")
        shape = "x".join(str(d) for d in pw.shape)
        rows.append((name, pw.module_type, shape, f"{pw.numel:,}", str(pw.depth)))
    s = plan_summary(planned, model)
    return "\n".join([
        *_aligned(rows, right={3, 4}, rules=(1,)), "",
        f"factorized: {s['factorized_tensors']} tensors, {s['factorized_weights']:,} weights "
        f"of {s['total_parameters']:,} parameters ({100 * s['factorized_share']:.1f}%); "
        f"{s['unfactorized_parameters']:,} stay dense",
    ])  # fmt: skip


def format_channel_plan(s: Mapping[str, Any]) -> str:
    """A plain-text table of a channel plan (`ChannelPlan.summary()`): each group, whether it is
    removable, then the MACs and the largest speed-up."""
    rows = [("group", "channels", "keeps", "layers", "removable")]
    for g in s["groups"]:
        layers = ", ".join(g["layers"][:3]) + (
            f" +{len(g['layers']) - 3}" if len(g["layers"]) > 3 else ""
        )
        rows.append((g["name"], str(g["channels"]), str(g["keeps_at_least"]), layers,
                     "yes" if g["removable"] else f"no: {g['reason']}"))  # fmt: skip
    floor = f", structure.min_keep={s['min_keep']:g}" if s["min_keep"] else ""
    return "\n".join([
        *_aligned(rows, right={1, 2}, rules=(1,)), "",
        f"{s['removable_groups']} removable groups, {s['removable_channels']:,} removable "
        f"channels (structure.round_to={s['round_to']}{floor}); {s['dense_macs']:,} MACs, "
        f"{s['dense_parameters']:,} parameters; at most {s['max_speedup']:.2f}x fewer MACs "
        f"(target {s['target_speedup']:g}x)",
    ])  # fmt: skip


def format_inspection(info: Mapping[str, Any]) -> str:
    """A plain-text table of `inspect_file`'s result, one row per tensor, then the totals.

    Example:
        print(format_inspection(inspect_file("model.onnx")))
    """
    rows = [("name", "shape", "dtype", "stored", "weights", "nonzero", "sparsity")]
    rows += [
        (r["name"], "x".join(map(str, r["shape"])) or "scalar", r["dtype"], r["stored"],
         f"{r['weights']:,}", f"{r['nonzero']:,}", f"{r['sparsity']:.2%}")
        for r in info["layers"]
    ]  # fmt: skip
    t = info["totals"]
    rows.append(("total", "", "", f"{t['tensors']} tensors", f"{t['weights']:,}",
                 f"{t['nonzero']:,}", f"{t['sparsity']:.2%}"))  # fmt: skip
    title = f"{info['path']} ({info['format']}, {t['file_bytes']:,} bytes)"
    lines = [title, *_aligned(rows, right={4, 5, 6}, rules=(1, len(rows) - 1))]
    pruned = info.get("pruned")
    if pruned:
        lines.append(
            f"channels removed: {pruned['channels_removed']:,} in {pruned['removals']} groups "
            f"({', '.join(pruned['layers'][:4])}{', ...' if pruned['removals'] > 4 else ''}); "
            "dwfc.load_pruned(path) rebuilds the smaller model from its --arch"
        )
    return "\n".join(lines)


def format_verification(result: dict[str, Any]) -> str:
    """Plain-text lines, one per check, for the CLI.

    Example:
        print(format_verification(verify_run("runs/lenet")))
    """
    width = max(len(c["check"]) for c in result["checks"])
    lines = [
        f"{c['status'].upper():7}  {c['check']:{width}}  {c['detail']}" for c in result["checks"]
    ]
    verdict = "verified" if result["ok"] else f"FAILED: {', '.join(result['failures'])}"
    return "\n".join([*lines, f"{result['out_dir']}: {verdict}"])


def format_latency(latency: LatencyInfo) -> str:
    """A plain-text table of latency rows, with the speed-up against the original model.

    Example:
        print(format_latency(bench_run("runs/lenet")))
    """
    rows = [("model", "batch", "threads", "median ms", "q1 ms", "q3 ms", "vs original")]
    for r in latency.rows:
        speedup = latency.speedup(r)
        rows.append((str(r.model), str(r.batch), threads(r.threads), f"{r.median_ms:.4g}",
                     f"{r.q1_ms:.4g}", f"{r.q3_ms:.4g}",
                     f"{speedup:.2f}x" if speedup else ""))  # fmt: skip
    title = (f"onnxruntime {latency.onnxruntime} on {latency.cpu} ({latency.cores} logical CPUs), "
             f"median of {latency.rounds} interleaved rounds")  # fmt: skip
    return "\n".join([title, *_aligned(rows, right={1, 3, 4, 5, 6}, rules=(1,)),
                      *(f"note: {n}" for n in latency.notes)])  # fmt: skip
