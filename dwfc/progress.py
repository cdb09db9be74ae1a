"""Progress for the CLI: turns the library's callback events into a rich progress bar."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """Context manager whose `callback(event, info)` drives one bar per training phase."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self._task: Any = None
        self._offset = 0
        self._eval = ""

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def callback(self, event: str, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event == "stage":
            self._progress.console.print(
                f"{info['stage']}"
                + (f": {info['factorized']} weights factorized" if "factorized" in info else "")
            )
        elif event == "phase":
            self._task = self._progress.add_task(info["phase"], total=info["total_steps"], stats="")
            self._offset = info.get("first_step", 0)
            self._eval = ""
        elif event == "log" and self._task is not None:
            step = info["step"] - self._offset
            stats = f"loss {info['loss']:.3f} acc {info['train_acc']:.1%}"
            if info.get("sparsity_rel") is not None:
                stats += f" sparsity {info['sparsity_rel']:.1%} λ {info['lambda']:.1e}"
            self._progress.update(self._task, completed=step, stats=stats + self._eval)
        elif event == "eval" and self._task is not None:
            self._eval = f" eval {info['eval_acc']:.1%}"
        elif event == "cut":
            self._progress.console.print(
                f"cut to target: accuracy {info['before_cut']:.2%} -> {info['after_cut']:.2%}"
            )
