"""Write a compression run's report: report.json, two PNG plots and a GitHub-markdown summary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dwfc._atomic import write_bytes_atomic, write_text_atomic
from dwfc.report_format import (
    DASH,
    code,
    count,
    fmt,
    get,
    jsonable,
    num,
    pct,
    ratio,
    sci,
    secs,
    section,
    sentence,
    shape,
    size,
    strings,
    table,
    text,
    yes_no,
)

__all__ = ["render_markdown", "write_report"]

METHOD_NAMES = {"dwf": "Deep Weight Factorization", "gmp": "gradual magnitude pruning",
                "oneshot": "one-shot magnitude pruning", "random": "random pruning",
                "l1": "L1 proximal SGD"}  # fmt: skip


def write_report(out_dir: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write report.json, layer_sparsity.png, training.png and report.md into `out_dir`.

    Returns the written paths in that order. Missing or None keys render as "—".
    """
    from dwfc.plots import layer_sparsity_figure, png, training_figure  # imports matplotlib

    out_dir = Path(out_dir)
    clean = jsonable(report)
    paths = [out_dir / n for n in ("report.json", "layer_sparsity.png", "training.png")]
    write_text_atomic(paths[0], json.dumps(clean, indent=2, allow_nan=False) + "\n")
    write_bytes_atomic(paths[1], png(layer_sparsity_figure(clean)))
    write_bytes_atomic(paths[2], png(training_figure(clean)))
    md = out_dir / "report.md"
    write_text_atomic(md, render_markdown(clean))
    return [*paths, md]


# --------------------------------------------------------------------------- markdown


def _method(r: Mapping[str, Any]) -> tuple[str, bool]:
    """The method's name and whether it is DWF (reports from before baselines are DWF)."""
    name = get(r, "method", "name")
    name = name if isinstance(name, str) and name.strip() else "dwf"
    return name, name == "dwf"


def _title(r: Mapping[str, Any]) -> str:
    name, dwf = _method(r)
    depth = get(r, "method", "depth")
    label = (f"DWF, D = {depth}" if depth is not None else "DWF") if dwf else f"{name} baseline"
    source = get(r, "model", "source")
    return "# dwfc compression report" + (f": {text(source)}" if source else "") + f" ({label})"


def _training_clause(s: Mapping[str, Any]) -> str:
    """'training alone brought X of the weights under Tx their layer's RMS; the cut ...'."""
    ctl, cut = num(s.get("reached_by_training_controlled")), num(s.get("largest_cut_relative"))
    thr = num(s.get("control_threshold"))
    parts = []
    if ctl is not None:
        under = "the control threshold" if thr is None else f"{sci(thr)}x their layer's RMS"
        parts.append(f"training alone brought {pct(ctl)} of the weights under {under}")
    if cut is not None:
        parts.append("the cut removed only weights that were already zero" if cut == 0 else
                     f"the cut removed none larger than {cut:.3g}x"
                     + ("" if ctl is not None else " its layer's RMS"))
    return "; ".join(parts)


def _summary(r: Mapping[str, Any]) -> str:
    compressed = get(r, "accuracy", "compressed_pytorch")
    if compressed is None:
        compressed = get(r, "accuracy", "after_finetune")
    name, dwf = _method(r)
    how = (f"Deep Weight Factorization (`dwf`) at depth D = {text(get(r, 'method', 'depth'))}"
           if dwf else f"the {METHOD_NAMES.get(name, name)} baseline (`{name}`)")
    md = (
        f"Model {code(get(r, 'model', 'source'))} (architecture "
        f"{code(get(r, 'model', 'arch'))}, {count(get(r, 'model', 'parameters'))} parameters) "
        f"was compressed with {how} on {text(r.get('device'))}, using data "
        f"{code(get(r, 'data', 'source'))}. Target sparsity "
        f"{pct(get(r, 'sparsity', 'target'))}, achieved **{pct(get(r, 'sparsity', 'achieved'))}"
        f"**, compression ratio **{ratio(get(r, 'sparsity', 'compression_ratio'))}**."
    )
    clause = _training_clause(section(r, "sparsity"))
    if clause:
        md += f" {clause[0].upper()}{clause[1:]}."
    md += (f" Accuracy {pct(get(r, 'accuracy', 'original'))} → **{pct(compressed)}** "
             f"(original → compressed). Total time {secs(get(r, 'timing', 'total_s'))}.")
    restarts = num(get(r, "method", "divergence_restarts"))
    if restarts:
        md += (f" Training diverged and was restarted {round(restarts)} time(s) with a "
                 "smaller learning rate.")
    gates = [g for g in r.get("gates") or [] if isinstance(g, Mapping)]
    failed = [str(g.get("gate")) for g in gates if g.get("passed") is False]
    if failed:
        md += f" **Quality gate failed: {', '.join(failed)}** (see Quality gates)."
    elif gates:
        md += f" All {len(gates)} quality gate(s) passed."
    return md


def _item(s: str) -> str:
    """One list item on one line, a sentence; a plain first word (not a name) capitalised."""
    s = sentence(s.replace("\n", " "))
    first = s.split(" ", 1)[0].rstrip(":,;.")
    return s[:1].upper() + s[1:] if first.isalpha() and first.islower() else s


def _warnings_section(r: Mapping[str, Any]) -> str:
    warnings = strings(r.get("warnings"))
    if not warnings:
        return ""
    lines = "\n".join(f"> - {_item(w)}" for w in warnings)
    return f"## Warnings\n\n> [!WARNING]\n{lines}"


def _gate_value(gate: str, x: Any) -> str:
    if gate == "max_accuracy_drop":
        return fmt(x, lambda v: f"{v:.2f} pp")
    return pct(x) if gate == "min_sparsity" else sci(x)


def _gates_section(r: Mapping[str, Any]) -> str:
    gates = [g for g in r.get("gates") or [] if isinstance(g, Mapping)]
    if not gates:
        return ""
    limit = {"max_accuracy_drop": "at most ", "min_sparsity": "at least "}
    rows = []
    for g in gates:
        gate, passed = str(g.get("gate")), g.get("passed")
        result = DASH if not isinstance(passed, bool) else ("PASS" if passed else "**FAIL**")
        rows.append([code(gate), limit.get(gate, "") + _gate_value(gate, g.get("threshold")),
                     _gate_value(gate, g.get("value")), result])
    note = ("A failed gate makes `dwfc compress` exit with code 3; the outputs and this report "
            "are still written.")
    return ("## Quality gates\n\n" + table(["Gate", "Limit", "Measured", "Result"], rows, "lrrl")
            + f"\n\n{note}")


def _accuracy_section(r: Mapping[str, Any]) -> str:
    acc = section(r, "accuracy")
    stages = [("original", "Original"), ("before_cut", "Before cut"), ("after_cut", "After cut"),
              ("after_finetune", "After masked fine-tune"),
              ("before_bn_recalibration", "Before BatchNorm recalibration"),
              ("after_bn_recalibration", "After BatchNorm recalibration"),
              ("compressed_pytorch", "Compressed (PyTorch)"),
              ("compressed_onnxruntime", "Compressed (onnxruntime)")]
    optional = {"before_bn_recalibration", "after_bn_recalibration"}
    orig = num(acc.get("original"))
    rows = []
    for key, label in stages:
        if key in optional and key not in acc:
            continue
        v = num(acc.get(key))
        delta = DASH if v is None or orig is None else f"{100 * (v - orig):+.2f} pp"
        rows.append([label, pct(v), "" if key == "original" else delta])
    n = get(r, "data", "eval_samples")
    note = f"\n\nEvaluated on {count(n)} samples." if num(n) is not None else ""
    return "## Accuracy\n\n" + table(["Stage", "Accuracy", "Δ vs original"], rows) + note


def _sparsity_section(r: Mapping[str, Any]) -> str:
    s = section(r, "sparsity")
    fw, tp = s.get("factorized_weights"), s.get("total_parameters")
    thr = sci(s.get("control_threshold"))
    rows = [
        ["Target", pct(s.get("target"))],
        ["Achieved", pct(s.get("achieved"))],
        [f"Reached by training at \\|w\\| < {thr}x layer RMS (controlled)",
         pct(s.get("reached_by_training_controlled"))],
        ["Largest \\|w\\| removed by the cut",
         fmt(s.get("largest_cut_relative"), lambda v: f"{v:.3g}x layer RMS")],
        [f"Reached by training at \\|w\\| < eps ({sci(s.get('eps'))})",
         pct(s.get("reached_by_training_eps"))],
        [f"Reached by training at relative threshold ({sci(s.get('relative_threshold'))})",
         pct(s.get("reached_by_training_relative"))],
        ["Factorized / total parameters", f"{count(fw)} / {count(tp)}"],
        ["Unfactorized parameters (kept dense)", count(s.get("unfactorized_parameters"))],
        ["Non-zero weights", count(s.get("nonzero_weights"))],
        ["Compression ratio", ratio(s.get("compression_ratio"))],
    ]
    note = ("*Controlled* is the quantity the lambda controller steers to the target: the share "
            "of weights with \\|w\\| below the control threshold times their layer's RMS at the "
            "start of training. The exact cut then zeroes the smallest weights globally; its "
            "largest removed \\|w\\| is in units of the same RMS.")
    return "## Sparsity\n\n" + table(["Quantity", "Value"], rows) + f"\n\n{note}"


def _layers_section(r: Mapping[str, Any]) -> str:
    rows = []
    for lay in r.get("layers") or []:
        if not isinstance(lay, Mapping):
            continue
        rows.append([code(lay.get("name")), shape(lay.get("shape")),
                     count(lay.get("weights")), count(lay.get("nonzero")),
                     pct(lay.get("sparsity")), yes_no(lay.get("factorized"))])
    if not rows:
        rows.append([DASH] * 6)
    header = ["Layer", "Shape", "Weights", "Non-zeros", "Sparsity", "Factorized"]
    return "## Per layer\n\n" + table(header, rows, align="llrrrl")


def _method_section(r: Mapping[str, Any]) -> str:
    m = section(r, "method")
    name, dwf = _method(r)
    d, wd = num(m.get("depth")), num(m.get("weight_decay"))
    implied = DASH if d is None or wd is None else sci(d * wd / 2)
    lam = sci(m.get("lambda")) + (f" (D·wd/2 = {implied})" if dwf else "")
    dwf_rows = [  # shown for a baseline only where recorded
        ("depth", ["Depth D", text(m.get("depth"))]),
        ("init", ["Initialisation", text(m.get("init"))]),
        ("weight_decay", ["Final weight decay (wd)", sci(m.get("weight_decay"))]),
        ("lambda", ["Final lambda", lam]),
        ("lambda_history_max", ["Max lambda during training", sci(m.get("lambda_history_max"))]),
    ]
    rows = [["Method", f"`{name}` ({METHOD_NAMES.get(name, 'unknown method')})"]]
    rows += [row for key, row in dwf_rows if dwf or m.get(key) is not None]
    rows += [["Optimizer", text(m.get("optimizer"))], ["Learning rate", sci(m.get("lr"))],
             ["LR schedule", text(m.get("schedule"))],
             ["Divergence restarts", count(m.get("divergence_restarts"))]]
    if dwf:
        note = ("Weight decay wd on each of the D factors acts as an L<sub>2/D</sub> penalty "
                "λ·‖w‖<sub>2/D</sub><sup>2/D</sup> on the collapsed weight, with λ = D·wd/2.")
    else:
        note = (f"`{name}` is a baseline (docs/baselines.md): it prunes the same weights without "
                "factorizing them; depth and initialisation above are recipe settings it does "
                "not use.")
    return "## Method\n\n" + table(["Setting", "Value"], rows, align="ll") + f"\n\n{note}"


def _run_section(r: Mapping[str, Any]) -> str:
    in_shape = r.get("input_shape")
    dtype = r.get("input_dtype")
    data = section(r, "data")
    counts = (f" ({count(data.get('train_samples'))} train / {count(data.get('eval_samples'))} "
              "eval)" if data.get("eval_samples") is not None else "")
    rows = [
        ["Device", text(r.get("device"))],
        ["Precision", text(r.get("precision"))],
        ["Processes (world size)", count(r.get("world_size"))],
        ["Resumed from a checkpoint", yes_no(r.get("resumed"))],
        ["Input shape (one sample)", shape(in_shape) + (f" ({text(dtype)})" if dtype else "")],
        ["Data", code(data.get("source")) + counts],
    ]
    return "## Run\n\n" + table(["Setting", "Value"], rows, align="ll")


def _notes_section(r: Mapping[str, Any]) -> str:
    notes = strings(get(r, "model", "notes"))
    if not notes:
        return ""
    items = "\n".join(f"- {_item(n)}" for n in notes)
    return f"## Notes\n\nHow the model file was read:\n\n{items}"


def _files_section(r: Mapping[str, Any]) -> str:
    files = section(r, "files")
    dense = num(files.get("dense_fp32_bytes"))
    rows = [["dense fp32 (reference)", count(dense), size(dense), "1.000" if dense else DASH]]
    names = ["model.safetensors", "model.onnx"]
    names += [k for k in files if k not in names and k != "dense_fp32_bytes"]
    for name in names:
        b = num(files.get(name))
        rel = DASH
        if b is not None and dense:
            rel = f"{b / dense:.3f}" + (f" ({dense / b:.1f}x smaller)" if 0 < b < dense else "")
        rows.append([code(name), count(b), size(b), rel])
    md = "## Files\n\n" + table(["File", "Bytes", "Size", "Ratio to dense fp32"], rows)
    if "model.sparse.onnx" in files:
        md += ("\n\n`model.sparse.onnx` holds the same model with sparse initializers: smaller "
                 "on disk only (see ONNX check).")
    hashes = r.get("hashes")
    if isinstance(hashes, Mapping) and hashes:
        md += (f"\n\nSHA-256 hashes of the {len(hashes)} exported tensors are in report.json "
                 "(`hashes`); `dwfc verify` checks them.")
    return md


def _onnx_section(r: Mapping[str, Any]) -> str:
    o = section(r, "onnx")
    diff, tol = num(o.get("max_abs_diff")), num(o.get("tolerance"))
    within = DASH if diff is None or tol is None else ("yes" if diff <= tol else "**no**")
    variant = o.get("sparse_variant")
    rows = [
        ["Max abs diff (onnxruntime vs PyTorch)", sci(diff)],
        ["Tolerance", sci(tol)],
        ["Within tolerance", within],
        ["Checker", text(o.get("checker"))],
        ["Opset", text(o.get("opset"))],
        ["Sparse variant", code(variant) if variant else
         ("not written" if "sparse_variant" in o else DASH)],
    ]
    md = "## ONNX check\n\n" + ("ONNX export was not run.\n\n" if not o else "")
    md += table(["Check", "Value"], rows)
    note = o.get("sparse_variant_note")
    if variant and isinstance(note, str) and note.strip():
        md += f"\n\n{code(variant)}: {sentence(note)}"
    return md


def _timing_section(r: Mapping[str, Any]) -> str:
    t = section(r, "timing")
    total = num(t.get("total_s"))
    rows = []
    for key, val in t.items():
        if key == "total_s":
            continue
        v = num(val)
        share = f"{100 * v / total:.1f} %" if v is not None and total else DASH
        rows.append([key.removesuffix("_s"), secs(v), share])
    rows.append(["**total**", secs(total), "100.0 %" if total else DASH])
    return "## Timing\n\n" + table(["Step", "Time", "Share"], rows)


def _recipe_section(r: Mapping[str, Any]) -> str:
    recipe = r.get("recipe")
    if recipe is None:
        return f"## Recipe\n\n{DASH}"
    body = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip()
    return f"## Recipe\n\nResolved recipe:\n\n```yaml\n{body}\n```"


def render_markdown(report: Mapping[str, Any]) -> str:
    """GitHub-markdown report text for a (JSON-clean) report mapping."""
    r = jsonable(report)
    plots = ("## Plots\n\n![Per-layer sparsity](layer_sparsity.png)\n\n"
             "![Training: accuracy, sparsity and lambda](training.png)")
    footer = (f"<sub>Generated by dwfc {text(r.get('dwfc_version'))} at "
              f"{text(r.get('created'))}.</sub>")
    parts = [_title(r), _summary(r), _warnings_section(r), _gates_section(r),
             _accuracy_section(r), _sparsity_section(r), _layers_section(r), _method_section(r),
             _run_section(r), _notes_section(r), _files_section(r), _onnx_section(r),
             _timing_section(r), plots, _recipe_section(r), footer]
    return "\n\n".join(p for p in parts if p) + "\n"
