"""docs/cli.md, generated from the Typer app so that it cannot go stale.

Regenerate with `python -m dwfc.cli.docs > docs/cli.md`; tests/test_cli_docs.py fails when the
file differs from `render_cli_docs()`. The output depends only on the app's definition, the
exit codes of dwfc/errors.py and the output files of dwfc/outputs.py (no terminal width, no
rich help formatting).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import typer.main

from dwfc.errors import EXIT_CODES
from dwfc.outputs import OUTPUT_FILES

__all__ = ["EXIT_CODES", "OUTPUT_FILES", "REGENERATE", "iter_commands", "render_cli_docs"]

REGENERATE = "python -m dwfc.cli.docs > docs/cli.md"
DASH = "—"


def _guide() -> str:
    """The hand-written part: exit codes, outputs, --json/--quiet, overrides, torchrun."""
    codes = "\n".join(f"| {code} | {text} |" for code, text in EXIT_CODES)
    files = "\n".join(f"| `{name}` | {text} |" for name, text in OUTPUT_FILES)
    return f"""\
## Exit codes

| Code | Meaning |
| ---: | :--- |
{codes}

Errors are one line on stderr, without a traceback (except exit code 1).

## Outputs of `dwfc compress`

Everything is written into a staging folder beside `--out` and moved into `--out` only when every
stage succeeded: a failed run leaves `--out` as it was (a non-empty `--out` needs `--overwrite`).

| File | What |
| --- | --- |
{files}

`dwfc verify OUT` re-checks these files against the hashes and numbers in `report.json`.

""" + GUIDE_TAIL


GUIDE_TAIL = """\
## `--json` and `--quiet`

`--json` prints exactly one JSON document on stdout and nothing else there: on success
`{"ok": true, ...}` with the command's result (for `compress`, the whole report, its `warnings`
and `gates` included, and `"out"`); on an error `{"ok": false, "error": "...", "exit_code": N}`;
for `verify`, its checks with `"ok": false` on a mismatch. Progress and error messages go to
stderr, so `dwfc compress ... --json > result.json` captures the result alone. Non-finite
numbers become `null`.

`--quiet` turns off the progress output (a live bar on a terminal, one plain line per epoch
elsewhere, both on stderr); the short summary at the end and any warnings are still printed.

## Recipe overrides: `key=value`

`compress` and `plan` take any number of `section.key=value` arguments after the model file, e.g.
`dwfc compress model.pt train.epochs=10 sparsity.target=0.9`. The recipe is built from
`--recipe` (a built-in name from `dwfc recipes`, or a YAML file), then the options above, then
the overrides, which win. Values are read as YAML (`3` is an integer, `1e-4` a float, `[a, b]` a
list) and validated; an unknown key is an error with a did-you-mean. Keys under a mapping may be
new, e.g. `model.arch_kwargs.num_classes=10`. An option shown with default "—" is unset unless
given: the recipe's value applies.

## Running under torchrun

```
torchrun --nproc_per_node N -m dwfc compress model.pt --arch dwfc.zoo:lenet_300_100 --out runs/ddp
```

Every process trains its share of each batch (the recipe's batch size is the global one; NCCL on
GPUs, gloo on CPUs) with DistributedDataParallel; the sparsity controller's lambda is the same on
every rank. Rank 0 alone exports and writes `--out`; `report.json` records `world_size`.
"""


def iter_commands() -> Iterator[tuple[str, Any]]:
    """(name, click command) of the root group and then each subcommand, in the app's order."""
    from dwfc.cli.app import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="dwfc")
    yield "", root
    for name in root.list_commands(ctx):
        yield name, root.get_command(ctx, name)


def _ctx(command: Any, name: str) -> Any:
    return command.context_class(command, info_name=f"dwfc {name}".strip())


def _cell(text: Any) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _type(param: Any, ctx: Any) -> str:
    """A parameter's value type: flag, int, float, str, path; repeatable or any number."""
    if getattr(param, "is_flag", False):
        return "flag"
    if hasattr(param, "display_type"):  # typer's own parameters
        label = param.display_type(ctx).strip("<>")
    else:  # plain click parameters
        label = getattr(getattr(param, "type", None), "name", "value")
    label = label.removeprefix("list[").removesuffix("]")
    if getattr(param, "multiple", False):
        label += ", repeatable"
    if param.nargs == -1:
        label += ", any number"
    return label


def _default(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "on" if param.default else "off"
    value = param.default
    if value is None or value in ((), []):
        return DASH
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return f"`{value}`"


def _flags(param: Any) -> str:
    names = ", ".join(f"`{o}`" for o in param.opts)
    return names + "".join(f" / `{o}`" for o in param.secondary_opts)


def _metavar(param: Any) -> str:
    name = (param.metavar or param.name).upper()
    name += "..." if param.nargs == -1 else ""
    return name if param.required else f"[{name}]"


def _params(command: Any, kind: str) -> list[Any]:
    return [p for p in command.params
            if getattr(p, "param_type_name", "") == kind and not getattr(p, "hidden", False)]


def _command_section(name: str, command: Any) -> str:
    ctx = _ctx(command, name)
    args, opts = _params(command, "argument"), _params(command, "option")
    usage = " ".join(["dwfc", *([name] if name else []), "[OPTIONS]",
                      *(_metavar(a) for a in args), *(["COMMAND [ARGS]..."] if not name else [])])
    title = f"`dwfc {name}`" if name else "`dwfc`"
    parts = [f"### {title}", _cell(command.help), f"```\n{usage}\n```"]
    if args:
        rows = [f"| `{_metavar(a).strip('[]')}` | {_type(a, ctx)} | "
                f"{'yes' if a.required else 'no'} | {_cell(getattr(a, 'help', ''))} |"
                for a in args]
        parts.append("| Argument | Type | Required | Description |\n| --- | --- | --- | --- |\n"
                     + "\n".join(rows))
    if opts:
        rows = [f"| {_flags(o)} | {_type(o, ctx)} | {_default(o)} | {_cell(o.help)} |"
                for o in opts]
        parts.append("| Option | Type | Default | Description |\n| --- | --- | --- | --- |\n"
                     + "\n".join(rows))
    return "\n\n".join(p for p in parts if p)


def render_cli_docs() -> str:
    """The whole of docs/cli.md: every command and option of `dwfc`, then the guide."""
    commands = list(iter_commands())
    root = commands[0][1]
    index = "\n".join(f"| [`dwfc {name}`](#dwfc-{name}) | {_cell(cmd.help)} |"
                      for name, cmd in commands[1:])
    parts = [
        "# The `dwfc` command",
        f"<!-- Generated from the Typer app in dwfc/cli/app.py by `{REGENERATE}`. Do not edit: "
        "tests/test_cli_docs.py fails when this file is stale. -->",
        f"{_cell(root.help)} Every command also takes `--help`.",
        "| Command | What it does |\n| --- | --- |\n" + index,
        "## Commands",
        *(_command_section(name, cmd) for name, cmd in commands),
        _guide().rstrip(),
    ]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_cli_docs())
