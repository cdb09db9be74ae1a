"""Write a compression run's report: report.json, two PNG plots and a GitHub-markdown summary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dwfc._atomic import write_bytes_atomic, write_text_atomic
from dwfc.export.onnx_file import FLUSH_BELOW
from dwfc.methods import METHODS, REGISTRIES
from dwfc.outputs import (
    LAYER_PLOT,
    ONNX,
    REPORT_JSON,
    REPORT_MD,
    SAFETENSORS,
    SPARSE_ONNX,
    TRAINING_PLOT,
)
from dwfc.report.format import (
    DASH,
    code,
    count,
    fmt,
    num,
    pct,
    ratio,
    sci,
    secs,
    sentence,
    shape,
    size,
    strings,
    table,
    text,
    threads,
    yes_no,
)
from dwfc.report.schema import (
    AccuracyInfo,
    DataInfo,
    MethodInfo,
    ModelInfo,
    OnnxInfo,
    RunReport,
    SparsityInfo,
    as_report,
)

__all__ = ["render_markdown", "write_report"]


def write_report(out_dir: Path, report: RunReport | Mapping[str, Any]) -> list[Path]:
    """Write report.json, layer_sparsity.png, training.png and report.md into `out_dir`.

    `report` is a RunReport or a report mapping (report.json's content). Returns the written
    paths in that order. Missing or None entries render as "—".
    """
    from dwfc.report.plots import layer_sparsity_figure, png, training_figure  # matplotlib

    out_dir = Path(out_dir)
    r = as_report(report)
    paths = [out_dir / n for n in (REPORT_JSON, LAYER_PLOT, TRAINING_PLOT)]
    write_text_atomic(paths[0], json.dumps(r.to_dict(), indent=2, allow_nan=False) + "\n")
    write_bytes_atomic(paths[1], png(layer_sparsity_figure(r)))
    write_bytes_atomic(paths[2], png(training_figure(r)))
    md = out_dir / REPORT_MD
    write_text_atomic(md, render_markdown(r))
    return [*paths, md]


# --------------------------------------------------------------------------- markdown


def _method(r: RunReport) -> tuple[str, bool]:
    """The method's name and whether it is DWF (reports from before baselines are DWF)."""
    name = (r.method or MethodInfo()).name
    name = name if isinstance(name, str) and name.strip() else "dwf"
    return name, name == "dwf"


def _structure(r: RunReport) -> str:
    return (r.method.structure if r.method else None) or "unstructured"


def _method_title(name: str, default: str, structure: str = "unstructured") -> str:
    methods = REGISTRIES.get(structure, METHODS)
    return methods[name].title if name in methods else default


def _title(r: RunReport) -> str:
    name, dwf = _method(r)
    depth = (r.method or MethodInfo()).depth
    kind = "structured DWF" if r.structure is not None else "DWF"
    label = (f"{kind}, D = {depth}" if depth is not None else kind) if dwf else f"{name} baseline"
    source = (r.model or ModelInfo()).source
    return "# dwfc compression report" + (f": {text(source)}" if source else "") + f" ({label})"


def _training_clause(s: SparsityInfo) -> str:
    """'training alone brought X of the weights under Tx their layer's RMS; the cut ...'."""
    ctl, cut = num(s.reached_by_training_controlled), num(s.largest_cut_relative)
    thr = num(s.control_threshold)
    parts = []
    if ctl is not None:
        under = "the control threshold" if thr is None else f"{sci(thr)}x their layer's RMS"
        parts.append(f"training alone brought {pct(ctl)} of the weights under {under}")
    if cut is not None:
        parts.append("the cut removed only weights that were already zero" if cut == 0 else
                     f"the cut removed none larger than {cut:.3g}x"
                     + ("" if ctl is not None else " its layer's RMS"))
    return "; ".join(parts)


def _summary(r: RunReport) -> str:
    acc, m = r.accuracy or AccuracyInfo(), r.method or MethodInfo()
    model, s = r.model or ModelInfo(), r.sparsity or SparsityInfo()
    compressed = acc.compressed_pytorch if acc.compressed_pytorch is not None else \
        acc.after_finetune
    name, dwf = _method(r)
    structure = _structure(r)
    method = "structured DWF (D-Gating)" if r.structure is not None else "Deep Weight Factorization"
    how = (f"{method} (`dwf`) at depth D = {text(m.depth)}" if dwf
           else f"the {_method_title(name, name, structure)} baseline (`{name}`)")
    md = (
        f"Model {code(model.source)} (architecture {code(model.arch)}, "
        f"{count(model.parameters)} parameters) was compressed with {how} on {text(r.device)}, "
        f"using data {code((r.data or DataInfo()).source)}. "
    )
    st = r.structure
    if st is not None:
        md += (f"Channels were removed physically: MAC speed-up **{ratio(st.speedup)}** (target "
               f"{ratio(st.target_speedup)}), {count(st.dense_macs)} → {count(st.macs)} MACs, "
               f"{count(st.dense_parameters)} → **{count(st.parameters)}** parameters.")
        clause = ""
    else:
        md += (f"Target sparsity {pct(s.target)}, achieved **{pct(s.achieved)}**, compression "
               f"ratio **{ratio(s.compression_ratio)}**.")
        clause = _training_clause(s)
    if clause:
        md += f" {clause[0].upper()}{clause[1:]}."
    md += (f" Accuracy {pct(acc.original)} → **{pct(compressed)}** "
           f"(original → compressed). Total time {secs(r.timing.get('total_s'))}.")
    restarts = num(m.divergence_restarts)
    if restarts:
        md += (f" Training diverged and was restarted {round(restarts)} time(s) with a "
               "smaller learning rate.")
    failed = [str(g.gate) for g in r.gates if g.passed is False]
    if failed:
        md += f" **Quality gate failed: {', '.join(failed)}** (see Quality gates)."
    elif r.gates:
        md += f" All {len(r.gates)} quality gate(s) passed."
    return md


def _item(s: str) -> str:
    """One list item on one line, a sentence; a plain first word (not a name) capitalised."""
    s = sentence(s.replace("\n", " "))
    first = s.split(" ", 1)[0].rstrip(":,;.")
    return s[:1].upper() + s[1:] if first.isalpha() and first.islower() else s


def _warnings_section(r: RunReport) -> str:
    warnings = strings(r.warnings)
    if not warnings:
        return ""
    lines = "\n".join(f"> - {_item(w)}" for w in warnings)
    return f"## Warnings\n\n> [!WARNING]\n{lines}"


def _gate_value(gate: str, x: Any) -> str:
    if gate.startswith("max_accuracy_drop"):
        return fmt(x, lambda v: f"{v:.2f} pp")
    if gate == "min_speedup":
        return ratio(x)
    return pct(x) if gate == "min_sparsity" else sci(x)


def _gates_section(r: RunReport) -> str:
    if not r.gates:
        return ""
    limit = {"max": "at most ", "min": "at least "}
    rows = []
    for g in r.gates:
        gate = str(g.gate)
        result = DASH if g.passed is None else ("PASS" if g.passed else "**FAIL**")
        rows.append([code(gate), limit.get(gate[:3], "") + _gate_value(gate, g.threshold),
                     _gate_value(gate, g.value), result])
    note = ("A failed gate makes `dwfc compress` exit with code 3; the outputs and this report "
            "are still written.")
    return ("## Quality gates\n\n" + table(["Gate", "Limit", "Measured", "Result"], rows, "lrrl")
            + f"\n\n{note}")


def _score(x: float | None) -> str:
    v = num(x)
    return DASH if v is None else f"{v:.3f}"


def _accuracy_section(r: RunReport) -> str:
    acc = r.accuracy or AccuracyInfo()
    stages = [("original", "Original"), ("before_cut", "Before cut"), ("after_cut", "After cut"),
              ("after_finetune", "After masked fine-tune"),
              ("before_bn_recalibration", "Before BatchNorm recalibration"),
              ("after_bn_recalibration", "After BatchNorm recalibration"),
              ("compressed_pytorch", "Compressed (PyTorch)"),
              ("compressed_onnxruntime", "Compressed (onnxruntime)"),
              ("compressed_int8", "Compressed int8 (onnxruntime)")]
    optional = {"before_bn_recalibration", "after_bn_recalibration", "compressed_int8"}
    orig = num(acc.original)
    rows = []
    for key, label in stages:
        v = num(getattr(acc, key))
        if key in optional and v is None:
            continue
        delta = DASH if v is None or orig is None else f"{100 * (v - orig):+.2f} pp"
        rows.append([label, pct(v), "" if key == "original" else delta])
    n = (r.data or DataInfo()).eval_samples
    note = f"\n\nEvaluated on {count(n)} samples." if num(n) is not None else ""
    if acc.original_top5 is not None or acc.compressed_pytorch_top5 is not None:
        note += (f" Top-5 accuracy (PyTorch): original {pct(acc.original_top5)}, compressed "
                 f"{pct(acc.compressed_pytorch_top5)}.")  # fmt: skip
    if acc.original_f1 is not None or acc.compressed_pytorch_f1 is not None:
        note += (f" F1 score of class 1 (PyTorch): original {_score(acc.original_f1)}, "
                 f"compressed {_score(acc.compressed_pytorch_f1)}.")  # fmt: skip
    return "## Accuracy\n\n" + table(["Stage", "Accuracy", "Δ vs original"], rows) + note


def _sparsity_section(r: RunReport) -> str:
    s = r.sparsity or SparsityInfo()
    thr = sci(s.control_threshold)
    rows = [
        ["Target", pct(s.target)],
        ["Achieved", pct(s.achieved)],
        [f"Reached by training at \\|w\\| < {thr}x layer RMS (controlled)",
         pct(s.reached_by_training_controlled)],
        ["Largest \\|w\\| removed by the cut",
         fmt(s.largest_cut_relative, lambda v: f"{v:.3g}x layer RMS")],
        [f"Reached by training at \\|w\\| < eps ({sci(s.eps)})", pct(s.reached_by_training_eps)],
        [f"Reached by training at relative threshold ({sci(s.relative_threshold)})",
         pct(s.reached_by_training_relative)],
        ["Factorized / total parameters",
         f"{count(s.factorized_weights)} / {count(s.total_parameters)}"],
        ["Unfactorized parameters (kept dense)", count(s.unfactorized_parameters)],
        ["Non-zero weights", count(s.nonzero_weights)],
        ["Compression ratio", ratio(s.compression_ratio)],
    ]
    note = ("*Controlled* is the quantity the lambda controller steers to the target: the share "
            "of weights with \\|w\\| below the control threshold times their layer's RMS at the "
            "start of training. The exact cut then zeroes the smallest weights globally; its "
            "largest removed \\|w\\| is in units of the same RMS.")
    return "## Sparsity\n\n" + table(["Quantity", "Value"], rows) + f"\n\n{note}"


def _structure_section(r: RunReport) -> str:
    """Channel runs: what was removed, and the channels each layer keeps."""
    st = r.structure
    if st is None:
        return ""
    rows = [
        ["MAC speed-up (counted on the smaller model)", ratio(st.speedup)],
        ["Target", ratio(st.target_speedup)],
        ["Largest possible (every removable channel removed)", ratio(st.max_speedup)],
        ["MACs, dense → compressed", f"{count(st.dense_macs)} → {count(st.macs)}"],
        ["Parameters, dense → compressed",
         f"{count(st.dense_parameters)} → {count(st.parameters)}"],
        ["Channel groups (removable)", f"{count(st.groups)} ({count(st.removable_groups)})"],
        ["Channels removed", f"{count(st.channels_removed)} of {count(st.channels)}"],
        ["Channels kept per layer: multiple of", count(st.round_to)],
        *([["Channels kept per layer: at least the share", f"{st.min_keep:g}"]]
          if st.min_keep else []),
        ["Negligible by training (controlled), as a MAC speed-up",
         ratio(st.reached_by_training_controlled)],
    ]
    layers = [[code(x.name), text(x.type), f"{count(x.in_channels)} → {count(x.kept_in)}",
               f"{count(x.out_channels)} → {count(x.kept_out)}",
               f"{count(x.parameters)} → {count(x.kept_parameters)}"] for x in st.layers]
    note = (f"MACs are Torch-Pruning's count for one example. The smaller architecture is "
            f"rebuilt from the original by the spec in {text(st.spec)}: "
            "`dwfc.load_pruned(\"model.safetensors\")`.")
    return ("## Structure\n\n" + table(["Quantity", "Value"], rows) + f"\n\n{note}\n\n"
            + "### Channels per layer\n\n"
            + table(["Layer", "Type", "Inputs", "Outputs", "Parameters"], layers or [[DASH] * 5],
                    align="llrrr"))


def _layers_section(r: RunReport) -> str:
    rows = [[code(lay.name), shape(lay.shape), count(lay.weights), count(lay.nonzero),
             pct(lay.sparsity), yes_no(lay.factorized)] for lay in r.layers]
    if not rows:
        rows.append([DASH] * 6)
    header = ["Layer", "Shape", "Weights", "Non-zeros", "Sparsity", "Factorized"]
    return "## Per layer\n\n" + table(header, rows, align="llrrrl")


def _method_section(r: RunReport) -> str:
    m = r.method or MethodInfo()
    name, dwf = _method(r)
    d, wd = num(m.depth), num(m.weight_decay)
    implied = DASH if d is None or wd is None else sci(d * wd / 2)
    lam = sci(m.lam) + (f" (D·wd/2 = {implied})" if dwf else "")
    dwf_rows = [  # shown for a baseline only where recorded
        (m.depth, ["Depth D", text(m.depth)]),
        (m.init, ["Initialisation", text(m.init)]),
        (m.weight_decay, ["Final weight decay (wd)", sci(m.weight_decay)]),
        (m.lam, ["Final lambda", lam]),
        (m.lambda_history_max, ["Max lambda during training", sci(m.lambda_history_max)]),
    ]
    rows = [["Method", f"`{name}` ({_method_title(name, 'unknown method', _structure(r))})"]]
    rows += [row for value, row in dwf_rows if dwf or value is not None]
    rows += [["Optimizer", text(m.optimizer)], ["Learning rate", sci(m.lr)],
             ["LR schedule", text(m.schedule)],
             ["Divergence restarts", count(m.divergence_restarts)]]
    if dwf and r.structure is not None:
        note = ("Weight decay wd on each channel's weights and its D - 1 gates acts as the group "
                "penalty λ·‖w<sub>c</sub>‖<sub>2</sub><sup>2/D</sup> on each channel, with "
                "λ = D·wd/2 (per group, weighted by structure.penalty and "
                "structure.penalty_scale).")
    elif dwf:
        note = ("Weight decay wd on each of the D factors acts as an L<sub>2/D</sub> penalty "
                "λ·‖w‖<sub>2/D</sub><sup>2/D</sup> on the collapsed weight, with λ = D·wd/2.")
    else:
        note = (f"`{name}` is a baseline (docs/baselines.md): it prunes the same weights without "
                "factorizing them; depth and initialisation above are recipe settings it does "
                "not use.")
    return "## Method\n\n" + table(["Setting", "Value"], rows, align="ll") + f"\n\n{note}"


def _run_section(r: RunReport) -> str:
    data = r.data or DataInfo()
    counts = (f" ({count(data.train_samples)} train / {count(data.eval_samples)} eval)"
              if data.eval_samples is not None else "")
    dtype = r.input_dtype
    rows = [
        ["Device", text(r.device)],
        ["Precision", text(r.precision)],
        ["Processes (world size)", count(r.world_size)],
        ["Resumed from a checkpoint", yes_no(r.resumed)],
        ["Input shape (one sample)", shape(r.input_shape) + (f" ({text(dtype)})" if dtype else "")
         + (f", inputs {', '.join(code(n) for n in r.input_names)}" if r.input_names else "")],
        ["Data", code(data.source) + counts],
    ]
    return "## Run\n\n" + table(["Setting", "Value"], rows, align="ll")


def _notes_section(r: RunReport) -> str:
    notes = strings((r.model or ModelInfo()).notes)
    if not notes:
        return ""
    items = "\n".join(f"- {_item(n)}" for n in notes)
    return f"## Notes\n\nHow the model file was read:\n\n{items}"


def _files_section(r: RunReport) -> str:
    files = r.files
    dense = num(files.get("dense_fp32_bytes"))
    rows = [["dense fp32 (reference)", count(dense), size(dense), "1.000" if dense else DASH]]
    names = [SAFETENSORS, ONNX]
    names += [k for k in files if k not in names and k != "dense_fp32_bytes"]
    for name in names:
        b = num(files.get(name))
        rel = DASH
        if b is not None and dense:
            rel = f"{b / dense:.3f}" + (f" ({dense / b:.1f}x smaller)" if 0 < b < dense else "")
        rows.append([code(name), count(b), size(b), rel])
    md = "## Files\n\n" + table(["File", "Bytes", "Size", "Ratio to dense fp32"], rows)
    if SPARSE_ONNX in files:
        md += (f"\n\n`{SPARSE_ONNX}` holds the same model with sparse initializers: smaller "
               "on disk only (see ONNX check).")
    if r.hashes:
        md += (f"\n\nSHA-256 hashes of the {len(r.hashes)} exported tensors are in report.json "
               "(`hashes`); `dwfc verify` checks them.")
    return md


def _onnx_section(r: RunReport) -> str:
    o = r.onnx or OnnxInfo()
    diff, tol = num(o.max_abs_diff), num(o.tolerance)
    within = DASH if diff is None or tol is None else ("yes" if diff <= tol else "**no**")
    variant = o.sparse_variant
    recorded = "sparse_variant" in o.model_fields_set
    rows = [
        ["Max abs diff (onnxruntime vs PyTorch)", sci(diff)],
        ["Tolerance", sci(tol)],
        ["Within tolerance", within],
        ["Checker", text(o.checker)],
        ["Opset", text(o.opset)],
        ["Sparse variant", code(variant) if variant else ("not written" if recorded else DASH)],
    ]
    if "full_check" in o.model_fields_set:
        rows[4:4] = [["Full check (strict shape inference)", text(o.full_check)],
                     ["Dynamic input axes", text(", ".join(o.dynamic_axes or []))]]
    if o.flushed is not None:
        rows.append([f"Weight values under {FLUSH_BELOW:.3g} set to 0 (subnormal products are "
                     "slow)", text(o.flushed)])  # fmt: skip
    if variant and o.sparse_variant_full_check:
        rows.append(["Sparse variant full check", text(o.sparse_variant_full_check)])
    md = "## ONNX check\n\n" + ("ONNX export was not run.\n\n" if not o.model_fields_set else "")
    md += table(["Check", "Value"], rows)
    note = o.sparse_variant_note
    if variant and isinstance(note, str) and note.strip():
        md += f"\n\n{code(variant)}: {sentence(note)}"
    if o.metadata:
        md += ("\n\nEach ONNX file's `metadata_props`: "
               + ", ".join(f"`{k}` = `{v}`" for k, v in o.metadata.items()) + ".")
    return md


def _int8_section(r: RunReport) -> str:
    q = r.int8
    if q is None:
        return ""
    acc = r.accuracy or AccuracyInfo()
    kept = (f"{count(q.zeros_kept)} of {count(q.zeros)}"
            if q.zeros is not None else DASH)  # fmt: skip
    rows = [
        ["File", code(q.file)],
        ["Quantization", text(q.mode) + (f", calibrated on {q.calibration_batches} batches"
                                         if q.calibration_batches else "")],
        ["Full check", text(q.full_check)],
        ["Accuracy (onnxruntime)", pct(acc.compressed_int8)],
        ["Max abs diff against model.onnx", sci(q.max_abs_diff)],
        ["Pruned weights still exactly zero", kept],
        ["Sparse weights stored as int8", text(", ".join(q.quantized))],
    ]
    if q.left_float:
        rows.append(["Sparse weights left in float", text(", ".join(q.left_float))])
    if q.unchecked:
        rows.append(["Quantized, layout not checked", text(", ".join(q.unchecked))])
    return "## int8\n\n" + table(["Check", "Value"], rows, align="ll")


def _latency_section(r: RunReport) -> str:
    lat = r.latency
    if lat is None:
        return ""
    rows = []
    for x in lat.rows:
        speedup = lat.speedup(x)
        rows.append([text(x.model), count(x.batch), threads(x.threads),
                     fmt(x.median_ms, lambda v: f"{v:.3g}"),
                     f"{fmt(x.q1_ms, lambda v: f'{v:.3g}')} – {fmt(x.q3_ms, lambda v: f'{v:.3g}')}",
                     f"{speedup:.2f}x" if speedup else ""])  # fmt: skip
    header = ["Model", "Batch", "Threads", "Median (ms)", "Quartiles (ms)", "vs original"]
    note = (f"onnxruntime {text(lat.onnxruntime)} on {text(lat.cpu)} ({count(lat.cores)} logical "
            f"CPUs), median of {count(lat.rounds)} interleaved rounds per setting, on "
            "evaluation inputs.")
    notes = "".join(f"\n\n{_item(n)}" for n in lat.notes)
    body = table(header, rows, align="llllrr") + "\n\n" if rows else ""
    return f"## Latency\n\n{body}{note}{notes}"


def _timing_section(r: RunReport) -> str:
    total = num(r.timing.get("total_s"))
    rows = []
    for key, val in r.timing.items():
        if key == "total_s":
            continue
        v = num(val)
        share = f"{100 * v / total:.1f} %" if v is not None and total else DASH
        rows.append([key.removesuffix("_s"), secs(v), share])
    rows.append(["**total**", secs(total), "100.0 %" if total else DASH])
    return "## Timing\n\n" + table(["Step", "Time", "Share"], rows)


def _recipe_section(r: RunReport) -> str:
    if r.recipe is None:
        return f"## Recipe\n\n{DASH}"
    body = yaml.safe_dump(r.recipe, sort_keys=False, allow_unicode=True).rstrip()
    return f"## Recipe\n\nResolved recipe:\n\n```yaml\n{body}\n```"


def render_markdown(report: RunReport | Mapping[str, Any]) -> str:
    """GitHub-markdown report text for a RunReport (or a report mapping)."""
    r = as_report(report)
    plots = (f"## Plots\n\n![Per-layer sparsity]({LAYER_PLOT})\n\n"
             f"![Training: accuracy, sparsity and lambda]({TRAINING_PLOT})")
    footer = f"<sub>Generated by dwfc {text(r.dwfc_version)} at {text(r.created)}.</sub>"
    weights = [_structure_section(r)] if r.structure else [_sparsity_section(r), _layers_section(r)]
    parts = [_title(r), _summary(r), _warnings_section(r), _gates_section(r),
             _accuracy_section(r), *weights, _method_section(r),
             _run_section(r), _notes_section(r), _files_section(r), _onnx_section(r),
             _int8_section(r), _latency_section(r), _timing_section(r), plots,
             _recipe_section(r), footer]
    return "\n\n".join(p for p in parts if p) + "\n"
