"""The `dwfc` command: a thin Typer shell over dwfc's Python API. Each command parses, calls
the library, renders; dwfc's errors are caught once (`_errors`) and exit with their code
(dwfc/errors.py, listed in docs/cli.md)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from dwfc._version import __version__
from dwfc.cli.options import (
    ArchKwargOpt,
    ArchOpt,
    DataOpt,
    DataRootOpt,
    DepthOpt,
    DepthOverrideOpt,
    EvalDataOpt,
    ExcludeOpt,
    ImageSizeOpt,
    IncludeOpt,
    JsonOpt,
    ModelArg,
    Overrides,
    QuietOpt,
    RecipeOpt,
    RoundToOpt,
    StructureOpt,
    TargetSpeedupOpt,
    TrustOpt,
    flag_overrides,
    opt,
)
from dwfc.cli.progress import RichProgress
from dwfc.cli.text import (
    compress_summary,
    for_cli,
    format_channel_plan,
    format_inspection,
    format_latency,
    format_plan,
    format_verification,
)
from dwfc.config import Recipe, builtin_recipes, load_recipe
from dwfc.errors import DwfcError, InputError, Interrupted, QualityGateFailed
from dwfc.report.format import jsonable
from dwfc.report.schema import RunReport

app = typer.Typer(
    name="dwfc",
    help="Make PyTorch models sparse with Deep Weight Factorization and ship them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console(soft_wrap=True)


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(document), indent=2) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _errors(as_json: bool = False) -> Iterator[None]:
    """Turn dwfc's errors into one line on stderr (and a JSON document with --json)."""
    try:
        yield
    except DwfcError as exc:
        message = for_cli(exc)
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        if as_json:
            _print_json({"ok": False, "error": message, "exit_code": exc.exit_code})
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: no output was written")
        raise typer.Exit(Interrupted.exit_code) from None


def _summary(report: RunReport, out_dir: Path) -> None:
    for line in compress_summary(report, str(out_dir)):
        out.print(line)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


@app.command()
def compress(
    model: ModelArg,
    overrides: Overrides = None,
    out_dir: Annotated[Path, opt("Output folder.", "--out", "-o")] = Path("runs/dwfc"),
    depth: DepthOpt = None,
    target_sparsity: Annotated[float | None, opt("Share of factorized weights to zero.")] = None,
    structure: StructureOpt = None,
    target_speedup: TargetSpeedupOpt = None,
    round_to: RoundToOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    data_root: DataRootOpt = None,
    image_size: ImageSizeOpt = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    trust_model: TrustOpt = False,
    device: Annotated[str | None, opt("auto, cpu, cuda or cuda:N.")] = None,
    epochs: Annotated[int | None, opt("DWF fine-tuning epochs.")] = None,
    lr: Annotated[float | None, opt("Learning rate on the collapsed weights.")] = None,
    seed: Annotated[int | None, opt("Random seed.")] = None,
    max_accuracy_drop: Annotated[
        float | None,
        opt(f"Gate: fail (exit {QualityGateFailed.exit_code}) past this loss, in points."),
    ] = None,
    min_sparsity: Annotated[
        float | None, opt(f"Gate: fail (exit {QualityGateFailed.exit_code}) below this sparsity.")
    ] = None,
    min_speedup: Annotated[
        float | None,
        opt(f"Gate (--structure channel): fail (exit {QualityGateFailed.exit_code}) below this "
            "MAC speed-up."),
    ] = None,
    quantize: Annotated[
        str | None, opt("none, dynamic or static: also write model.int8.onnx.")
    ] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    depth_override: DepthOverrideOpt = None,
    recipe: RecipeOpt = "default",
    dry_run: Annotated[
        bool, opt("List the weights (channel groups) that would be compressed, then stop.")
    ] = False,
    overwrite: Annotated[bool, opt("Replace the outputs in a non-empty --out.")] = False,
    resume: Annotated[bool, opt("Continue from --out/checkpoint.pt.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Factorize (or gate channels), fine-tune, cut to the target; write safetensors, ONNX and a
    report."""
    from dwfc.pipeline import compress as run_compress

    with _errors(as_json):
        resolved = _resolve_recipe(
            recipe, overrides, arch_kwarg, trust_model, include, exclude, depth_override,
            depth=depth, target_sparsity=target_sparsity, structure=structure,
            target_speedup=target_speedup, round_to=round_to, data=data, eval_data=eval_data,
            data_root=data_root, image_size=image_size, quantize=quantize,
            arch=arch, device=device, epochs=epochs, seed=seed, lr=lr,
            max_accuracy_drop=max_accuracy_drop, min_sparsity=min_sparsity,
            min_speedup=min_speedup,
        )  # fmt: skip
        if dry_run:
            _plan(model, resolved, as_json)
            return
        with RichProgress(err, enabled=not quiet) as progress:
            report = run_compress(
                model, out_dir, resolved, overwrite=overwrite, resume=resume,
                callback=progress.callback,
            )  # fmt: skip
        if report.rank is not None:  # a torchrun rank other than 0: rank 0 reports
            return
        if as_json:
            _print_json({"ok": True, "out": str(out_dir), **report.to_dict()})
        else:
            _summary(report, out_dir)


def _resolve_recipe(
    recipe: str, overrides: list[str] | None, arch_kwarg: list[str] | None, trust_model: bool,
    include: list[str] | None, exclude: list[str] | None, depth_override: list[str] | None,
    **flags: Any,
) -> Recipe:  # fmt: skip
    """The recipe file, then the flags, then the key=value overrides (which win)."""
    given = flag_overrides(**flags)
    given += [f"model.arch_kwargs.{kv}" for kv in arch_kwarg or []]
    if trust_model:
        given.append("model.trust_model=true")
    resolved = load_recipe(recipe, [*given, *(overrides or [])])
    _apply_selection(resolved, include, exclude, depth_override)
    return resolved


def _apply_selection(
    recipe: Recipe, include: list[str] | None, exclude: list[str] | None,
    depth_override: list[str] | None,
) -> None:  # fmt: skip
    """Patterns go straight into the recipe: YAML would misread globs like `*_reverse`."""
    factorize = recipe.factorize
    factorize.include = [*factorize.include, *(include or [])]
    factorize.exclude = [*factorize.exclude, *(exclude or [])]
    overrides = dict(factorize.depth_overrides)
    for item in depth_override or []:
        pattern, sep, depth = item.rpartition("=")
        if not sep or not pattern or not depth.strip().isdigit():
            raise InputError(f"--depth-override '{item}' must look like PATTERN=D, e.g. fc*=2")
        overrides[pattern] = int(depth)
    factorize.depth_overrides = overrides


def _plan(model_path: Path, recipe: Recipe, as_json: bool) -> None:
    from dwfc.models import load_model_with_notes
    from dwfc.models.defaults import with_model_defaults
    from dwfc.select import plan, plan_summary

    model, _ = load_model_with_notes(
        model_path, recipe.model.arch, recipe.model.arch_kwargs, recipe.model.trust_model
    )
    recipe, _ = with_model_defaults(recipe, model)
    if recipe.structure.kind == "channel":
        _channel_plan(model, recipe, as_json)
        return
    planned = plan(model, recipe.factorize)
    if as_json:
        _print_json({"ok": True, **plan_summary(planned, model)})
    else:
        out.print(format_plan(planned, model), highlight=False, markup=False)


def _channel_plan(model: Any, recipe: Recipe, as_json: bool) -> None:
    """The channel groups of `model` traced on the recipe's data; a target no removal reaches
    is refused here too."""
    import torch

    from dwfc.data.loaders import check_fit, load_run_data
    from dwfc.pipeline import plan_for

    example = check_fit(model, load_run_data(recipe, torch.device("cpu")))
    summary = plan_for(model, example, recipe).summary()
    summary["target_speedup"] = recipe.structure.target_speedup
    if as_json:
        _print_json({"ok": True, **summary})
    else:
        out.print(format_channel_plan(summary), highlight=False, markup=False)


@app.command()
def verify(
    out_dir: Annotated[Path, typer.Argument(help="An output folder of dwfc compress.")],
    data: Annotated[str | None, opt("Re-measure accuracy on this data (e.g. mnist5k).")] = None,
    batch_size: Annotated[int, opt("Batch size of the ONNX parity check.")] = 256,
    accuracy_tolerance: Annotated[
        float, opt("Allowed accuracy difference (runs recorded on CUDA or in bf16).")
    ] = 1e-9,
    as_json: JsonOpt = False,
) -> None:
    """Re-check a finished run: hashes, sparsity, ONNX parity, accuracy (exit 6 on mismatch)."""
    from dwfc.verify import raise_for_failures, verify_run

    with _errors(as_json):
        result = verify_run(
            out_dir, data_source=data, batch_size=batch_size, accuracy_tolerance=accuracy_tolerance
        )
        if as_json:
            _print_json(result)
        else:
            out.print(format_verification(result), highlight=False, markup=False)
        raise_for_failures(result)


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="A .safetensors (sparse or dense), .onnx or .pt.")],
    as_json: JsonOpt = False,
) -> None:
    """Per-layer shapes, non-zeros and sparsity of a model file, and the totals."""
    from dwfc.inspect import inspect_file

    with _errors(as_json):
        info = inspect_file(file)
        if as_json:
            _print_json({"ok": True, **info})
        else:
            out.print(format_inspection(info), highlight=False, markup=False)


@app.command()
def bench(
    out_dir: Annotated[Path, typer.Argument(help="An output folder of dwfc compress.")],
    rounds: Annotated[int, opt("Interleaved rounds per setting.")] = 5,
    batch: Annotated[list[int] | None, opt("Batch size (repeatable; default: the run's).")] = None,
    trust_model: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure the onnxruntime latency of a run's models again, on this machine."""
    from dwfc.bench import bench_run

    with _errors(as_json):
        latency = bench_run(out_dir, rounds=rounds, batches=batch, trust_model=trust_model)
        if as_json:
            _print_json({"ok": True, "latency": latency.model_dump()})
        else:
            out.print(format_latency(latency), highlight=False, markup=False)


@app.command()
def unpack(
    path: Annotated[Path, typer.Argument(help="An output folder, or a dwfc .safetensors file.")],
    to: Annotated[Path | None, opt("Where to write (default: model.dense.safetensors beside).")]
    = None,
) -> None:
    """Write the sparse weights as a plain, dense safetensors file any loader reads."""
    from dwfc.export.sparse_file import unpack as unpack_file
    from dwfc.outputs import DENSE_SAFETENSORS, SAFETENSORS

    with _errors():
        src = path / SAFETENSORS if path.is_dir() else path
        written = unpack_file(src, to or src.with_name(DENSE_SAFETENSORS))
        out.print(f"wrote {written}")


@app.command("plan")
def plan_command(
    model: ModelArg,
    overrides: Overrides = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    trust_model: TrustOpt = False,
    depth: DepthOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    depth_override: DepthOverrideOpt = None,
    structure: StructureOpt = None,
    target_speedup: TargetSpeedupOpt = None,
    round_to: RoundToOpt = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    image_size: ImageSizeOpt = None,
    recipe: RecipeOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """List every weight `compress` would factorize, or with --structure channel every channel
    group it could remove and the largest speed-up (same as `compress --dry-run`)."""
    with _errors(as_json):
        resolved = _resolve_recipe(
            recipe, overrides, arch_kwarg, trust_model, include, exclude, depth_override,
            arch=arch, depth=depth, structure=structure, target_speedup=target_speedup,
            round_to=round_to, data=data, data_root=data_root, image_size=image_size,
        )  # fmt: skip
        _plan(model, resolved, as_json)


@app.command()
def demo(
    out_dir: Annotated[Path, opt("Output folder (replaced).", "--out", "-o")] = Path("runs/demo"),
    quiet: QuietOpt = False,
) -> None:
    """Train LeNet-300-100 on the bundled MNIST subset, then compress it to 95% sparsity."""
    from dwfc.demo import run_demo

    with _errors():
        with RichProgress(err, enabled=not quiet) as progress:
            report, command = run_demo(out_dir, callback=progress.callback)
        out.print(f"[bold]demo[/]: the same as running\n  {command}")
        _summary(report, out_dir / "compressed")


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    for name in builtin_recipes():
        out.print(name)


def _version(value: bool) -> None:
    if value:
        out.print(f"dwfc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Make PyTorch models sparse with Deep Weight Factorization and ship them."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
