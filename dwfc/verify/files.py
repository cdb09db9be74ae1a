"""The checks of `dwfc verify` on the report and the weights: report.json, the files, the
sparse safetensors file and its hashes, the sparsity, the rebuilt model and, for channel runs,
its structure."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from dwfc.errors import first_line
from dwfc.export.sparse_file import (
    HASHES_KEY,
    SPARSE_KEYS_KEY,
    SPARSITY_KEY,
    load_sparse,
    read_metadata,
    tensor_digests,
)
from dwfc.outputs import HF_MODEL, INT8_ONNX, ONNX, RECIPE, REPORT_JSON, SAFETENSORS, SPARSE_ONNX
from dwfc.report.schema import RunReport
from dwfc.structure import PRUNED_KEY, PrunedSpec, count_macs, rebuild_
from dwfc.verify.state import Fail, Run, Skip, json_meta, listing


def check_report(run: Run) -> str:
    path = run.out / REPORT_JSON
    if not path.is_file():
        raise Fail(f"{REPORT_JSON} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise Fail(f"{REPORT_JSON} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise Fail(f"{REPORT_JSON} holds a {type(raw).__name__}, not an object")
    run.report, problems = RunReport.from_sections(raw, strict=True)
    if problems:  # the other checks go on with the sections that read
        raise Fail(f"{REPORT_JSON}: {listing(problems)}")
    return f"dwfc {run.report.dwfc_version or '?'}, created {run.report.created or '?'}"


def check_files(run: Run) -> str:
    wanted = [SAFETENSORS, REPORT_JSON, RECIPE]
    wanted += [ONNX] if run.expects(ONNX) else []
    wanted += [SPARSE_ONNX] if run.expects(SPARSE_ONNX) else []
    wanted += [INT8_ONNX] if run.expects(INT8_ONNX) else []
    missing = [name for name in wanted if not (run.out / name).is_file()]
    if missing:
        raise Fail(f"missing {', '.join(missing)}")
    sizes = run.report.files
    wrong = [
        f"{name} is {(run.out / name).stat().st_size} bytes, report says {size}"
        for name, size in sizes.items()
        if name in wanted and (run.out / name).stat().st_size != size
    ]
    if wrong:
        raise Fail("; ".join(wrong))
    return f"{len(wanted)} files present" + (", sizes as recorded" if sizes else "")


def check_safetensors(run: Run) -> str:
    path = run.out / SAFETENSORS
    if not path.is_file():
        raise Skip(f"{SAFETENSORS} is missing")
    run.state = load_sparse(path)
    run.meta = read_metadata(path)
    sparse = json_meta(run.meta, SPARSE_KEYS_KEY) or []
    return f"{len(run.state)} tensors, {len(sparse)} stored sparse"


def check_hashes(run: Run) -> str:
    if run.state is None:
        raise Skip(f"{SAFETENSORS} did not load")
    recorded = run.report.hashes
    if recorded is None:
        raise Fail(f'{REPORT_JSON} records no tensor hashes ("hashes")')
    in_file = json_meta(run.meta, HASHES_KEY)
    if in_file is not None and in_file != recorded:
        raise Fail(f"the {HASHES_KEY} metadata of {SAFETENSORS} differs from {REPORT_JSON}")
    actual = tensor_digests(run.state)
    problems = [f"{k} (hash differs)" for k in actual if k in recorded and actual[k] != recorded[k]]
    problems += [f"{k} (not recorded)" for k in actual if k not in recorded]
    problems += [f"{k} (not in the file)" for k in recorded if k not in actual]
    if problems:
        raise Fail("tensor mismatch: " + listing(problems))
    return f"{len(actual)} tensors match their sha256 digests"


def check_sparsity(run: Run) -> str:
    if run.state is None:
        raise Skip(f"{SAFETENSORS} did not load")
    if run.report.structure is not None:
        raise Skip("a --structure channel run: the structure check counts what was removed")
    layers, summary = run.report.layers, run.report.sparsity
    if "layers" not in run.report.model_fields_set or summary is None:
        raise Fail(f'{REPORT_JSON} has no "layers" list or "sparsity" summary')
    problems, weights, nonzero = [], 0, 0
    for row in layers:
        name = row.name
        if name not in run.state:
            problems.append(f"layer {name!r} is not in {SAFETENSORS}")
            continue
        t = run.state[name]
        actual = {"shape": list(t.shape), "weights": t.numel(), "nonzero": int(t.count_nonzero())}
        actual["sparsity"] = 1.0 - actual["nonzero"] / actual["weights"] if t.numel() else 0.0
        weights, nonzero = weights + actual["weights"], nonzero + actual["nonzero"]
        problems += [
            f"{name} {key} is {value}, report says {getattr(row, key)}"
            for key, value in actual.items()
            if not _same(value, getattr(row, key))
        ]
    overall = {
        "factorized_weights": weights,
        "nonzero_weights": nonzero,
        "achieved": 1.0 - nonzero / weights if weights else 0.0,
    }
    for source, recorded in (
        ("report", summary.model_dump(exclude_unset=True)),
        ("metadata", json_meta(run.meta, SPARSITY_KEY)),
    ):
        for key, value in overall.items() if isinstance(recorded, dict) else ():
            if key in recorded and not _same(value, recorded[key]):
                problems.append(f"sparsity {key} is {value}, {source} says {recorded[key]}")
    sparse_keys = json_meta(run.meta, SPARSE_KEYS_KEY)
    if sparse_keys is not None and set(sparse_keys) != {r.name for r in layers}:
        problems.append("the layers stored sparse are not the layers the report lists")
    if problems:
        raise Fail(listing(problems))
    return f"{len(layers)} layers, sparsity {overall['achieved']:.4%} ({nonzero}/{weights} kept)"


def _same(actual: Any, recorded: Any) -> bool:
    if isinstance(actual, float) and isinstance(recorded, (int, float)):
        return math.isclose(actual, recorded, rel_tol=0.0, abs_tol=1e-12)
    return actual == recorded


def check_model(run: Run) -> str:
    from dwfc.config import load_recipe
    from dwfc.models import build_model, hf

    if not (run.out / RECIPE).is_file():
        raise Fail(f"{RECIPE} is missing")
    run.recipe = load_recipe(str(run.out / RECIPE))
    if run.state is None:
        raise Skip(f"{SAFETENSORS} did not load")
    arch = run.recipe.model.arch
    if arch is None and (run.out / HF_MODEL).is_dir():
        model, _ = hf.load(run.out / HF_MODEL)
        arch = f"{HF_MODEL}/ (transformers)"
    elif arch is None:
        raise Skip("the run compressed a whole pickled module: no architecture to rebuild")
    else:
        model = build_model(arch, run.recipe.model.arch_kwargs)
    shrunk = ""
    if PRUNED_KEY in run.meta:  # a channel run: the architecture shrunk as the spec says
        spec = PrunedSpec.from_json(run.meta[PRUNED_KEY])
        rebuild_(model, spec)
        shrunk = f", shrunk by its pruned-model spec ({len(spec.history)} removals)"
    try:
        model.load_state_dict(run.state, strict=True)
    except RuntimeError as exc:
        raise Fail(f"{arch} does not load {SAFETENSORS}: {first_line(exc)}") from None
    run.model = model.to("cpu").eval()
    return f"{arch} rebuilt{shrunk}, weights loaded strictly"


def check_structure(run: Run) -> str:
    """A channel run: the rebuilt model's channels, parameters and MACs are the report's."""
    st = run.report.structure
    if st is None:
        raise Skip("not a --structure channel run")
    if PRUNED_KEY not in run.meta:
        raise Fail(f"{SAFETENSORS} holds no pruned-model spec ({PRUNED_KEY})")
    if run.model is None:
        raise Skip("no rebuilt model to count")
    modules = dict(run.model.named_modules())
    problems = []
    for row in st.layers:
        module = modules.get(str(row.name))
        if module is None:
            problems.append(f"layer {row.name} is not in the rebuilt model")
            continue
        kept = (_channels(module, 0), _channels(module, 1))
        if kept != (row.kept_in, row.kept_out):
            problems.append(f"{row.name} keeps {kept[0]} -> {kept[1]} channels, report says "
                            f"{row.kept_in} -> {row.kept_out}")  # fmt: skip
    shape = run.report.input_shape
    if shape:
        macs, params = count_macs(run.model, torch.zeros(1, *shape))
        if (macs, params) != (st.macs, st.parameters):
            problems.append(f"{macs:,} MACs and {params:,} parameters counted, report says "
                            f"{st.macs:,} and {st.parameters:,}")  # fmt: skip
    if (
        st.dense_macs
        and st.macs
        and not math.isclose(st.dense_macs / st.macs, st.speedup or 0.0, rel_tol=1e-9)
    ):
        problems.append(f"speed-up {st.speedup} is not dense MACs / MACs")
    if problems:
        raise Fail(listing(problems))
    return (f"{len(st.layers)} layers as recorded; {st.macs:,} MACs ({st.speedup:.2f}x fewer "
            f"than {st.dense_macs:,}), {st.parameters:,} parameters")  # fmt: skip


def _channels(module: Any, out: int) -> int | None:
    if hasattr(module, "out_features"):
        return module.out_features if out else module.in_features
    return getattr(module, "out_channels" if out else "in_channels", None)
