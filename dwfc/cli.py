"""The `dwfc` command: a thin Typer shell over dwfc's Python API."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .config import builtin_recipes, load_recipe
from .errors import DwfcError
from .progress import RichProgress

app = typer.Typer(
    name="dwfc",
    help="Make PyTorch models sparse with Deep Weight Factorization and ship them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console(soft_wrap=True)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Recipe overrides: key=value, e.g. train.epochs=10.", show_default=False),
]
RecipeOpt = Annotated[
    str, typer.Option("--recipe", "-r", help="Built-in recipe name or a YAML file.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _opt(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help, show_default=False)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn dwfc's errors into one line on stderr and their exit code."""
    try:
        yield
    except DwfcError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: nothing was written")
        raise typer.Exit(130) from None


def _flag_overrides(**flags: Any) -> list[str]:
    keys = {
        "depth": "factorize.depth",
        "target_sparsity": "sparsity.target",
        "data": "data.source",
        "arch": "model.arch",
        "device": "train.device",
        "epochs": "train.epochs",
        "seed": "train.seed",
        "lr": "train.lr",
    }
    result = [f"{keys[name]}={value}" for name, value in flags.items() if value is not None]
    return result


def _summary(report: dict[str, Any], out_dir: Path) -> None:
    sp, acc = report["sparsity"], report["accuracy"]
    ort = acc.get("compressed_onnxruntime")
    out.print(
        f"sparsity {sp['achieved']:.2%} (target {sp['target']:.2%}, DWF reached "
        f"{sp['reached_by_training_relative']:.2%} by itself), CR {sp['compression_ratio']:.1f}x"
    )
    out.print(
        f"accuracy {acc['original']:.2%} -> {acc['compressed_pytorch']:.2%} (PyTorch)"
        + (f", {ort:.2%} (onnxruntime)" if ort is not None else "")
    )
    out.print(f"outputs in {out_dir}/: model.safetensors, model.onnx, report.md, report.json")


@app.command()
def compress(
    model: Annotated[Path, typer.Argument(help="A state dict (with --arch) or a saved module.")],
    overrides: Overrides = None,
    out_dir: Annotated[Path, _opt("Output folder.", "--out", "-o")] = Path("runs/dwfc"),
    depth: Annotated[int | None, _opt("D, the number of factors (>= 2).")] = None,
    target_sparsity: Annotated[float | None, _opt("Share of factorized weights to zero.")] = None,
    data: Annotated[str | None, _opt("mnist5k or package.module:factory.")] = None,
    arch: Annotated[str | None, _opt("package.module:factory that builds the model.")] = None,
    arch_kwarg: Annotated[
        list[str] | None, _opt("Factory argument key=value (repeatable).")
    ] = None,
    trust_model: Annotated[bool, _opt("Allow unpickling a saved module (runs its code).")] = False,
    device: Annotated[str | None, _opt("auto, cpu, cuda or cuda:N.")] = None,
    epochs: Annotated[int | None, _opt("DWF fine-tuning epochs.")] = None,
    lr: Annotated[float | None, _opt("Learning rate on the collapsed weights.")] = None,
    seed: Annotated[int | None, _opt("Random seed.")] = None,
    recipe: RecipeOpt = "default",
    overwrite: Annotated[bool, _opt("Replace the outputs in a non-empty --out.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Factorize, fine-tune, cut to the target sparsity; write safetensors, ONNX and a report."""
    from .pipeline import compress as run_compress

    with _errors():
        flags = _flag_overrides(
            depth=depth,
            target_sparsity=target_sparsity,
            data=data,
            arch=arch,
            device=device,
            epochs=epochs,
            seed=seed,
            lr=lr,
        )
        flags += [f"model.arch_kwargs.{kv}" for kv in arch_kwarg or []]
        if trust_model:
            flags.append("model.trust_model=true")
        resolved = load_recipe(recipe, [*flags, *(overrides or [])])
        with RichProgress(err, enabled=not quiet) as progress:
            report = run_compress(
                model, out_dir, resolved, overwrite=overwrite, callback=progress.callback
            )
        _summary(report, out_dir)


@app.command()
def demo(
    out_dir: Annotated[Path, _opt("Output folder (replaced).", "--out", "-o")] = Path("runs/demo"),
    quiet: QuietOpt = False,
) -> None:
    """Train LeNet-300-100 on the bundled MNIST subset, then compress it to 95% sparsity."""
    from .demo import run_demo

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
    ] = False,  # noqa: E501
) -> None:
    """Make PyTorch models sparse with Deep Weight Factorization and ship them."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
