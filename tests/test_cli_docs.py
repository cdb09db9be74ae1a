"""docs/cli.md is generated from the Typer app (dwfc.cli.docs) and must match it exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dwfc.cli.docs import EXIT_CODES, OUTPUT_FILES, REGENERATE, iter_commands, render_cli_docs

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"


@pytest.fixture(scope="module")
def rendered() -> str:
    return render_cli_docs()


def test_cli_md_is_current(rendered: str) -> None:
    current = CLI_MD.read_text(encoding="utf-8") if CLI_MD.is_file() else ""
    assert current == rendered, (
        "docs/cli.md is stale: it differs from what dwfc.cli.docs renders from the CLI (the "
        "CLI or the generator changed, or the file was edited by hand). Regenerate it from the "
        f"repository root with `{REGENERATE}` and commit the result."
    )


def test_every_command_and_option_is_documented(rendered: str) -> None:
    commands = dict(iter_commands())
    assert {"compress", "plan", "verify", "inspect", "demo", "recipes"} <= set(commands)
    for name, command in commands.items():
        heading = f"### `dwfc {name}`" if name else "### `dwfc`"
        assert heading in rendered
        section = rendered.split(heading + "\n", 1)[1].split("\n### ", 1)[0]
        if command.help:
            assert " ".join(command.help.split()) in section
        for param in command.params:
            if param.param_type_name == "option":
                row = next(line for line in section.splitlines()
                           if line.startswith(f"| `{param.opts[0]}`"))
                assert all(f"`{flag}`" in row for flag in [*param.opts, *param.secondary_opts])
                assert " ".join(param.help.split()) in row, param.name
            else:
                assert f"| `{param.name.upper()}" in section, param.name


def test_hand_written_guide(rendered: str) -> None:
    for code, _ in EXIT_CODES:
        assert f"\n| {code} | " in rendered
    assert [code for code, _ in EXIT_CODES] == [0, 1, 2, 3, 4, 5, 6, 130]
    for name, _ in OUTPUT_FILES:
        assert f"| `{name}` |" in rendered
    for text in ("## `--json` and `--quiet`", "## Recipe overrides: `key=value`",
                 "torchrun --nproc_per_node N -m dwfc compress", "--resume"):
        assert text in rendered


def test_rendering_is_deterministic(rendered: str) -> None:
    """Same text in a fresh interpreter with another terminal width, as `python -m` writes it."""
    env = {**os.environ, "COLUMNS": "37", "LINES": "5", "TERM": "dumb"}
    result = subprocess.run([sys.executable, "-m", "dwfc.cli.docs"], cwd=ROOT, env=env,
                            capture_output=True, text=True, encoding="utf-8", check=True)
    assert result.stdout == rendered
    assert all(len(line) < 400 for line in rendered.splitlines())
