"""The `dwfc` command line: the Typer app (app.py), its shared options (options.py), the text it
prints (text.py), progress (progress.py) and the generator of docs/cli.md (docs.py)."""

from dwfc.cli.app import app, main

__all__ = ["app", "main"]
