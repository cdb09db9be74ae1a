"""Progress for the CLI: the library's callback events as a rich bar, or as plain log lines."""

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


def _stats(info: dict[str, Any], channels: bool = False) -> str:
    text = f"loss {info['loss']:.3f} acc {info['train_acc']:.1%}"
    share = info.get("sparsity_ctl")
    if share is not None and channels:  # the share of MACs in negligible channels
        text += f" speed-up {1.0 / max(1e-9, 1.0 - share):.2f}x"
    elif share is not None:
        text += f" sparsity {share:.1%}"
    if info.get("lambda") is not None:  # a penalty acts (DWF, l1 before the cut)
        text += f" λ {info['lambda']:.1e}"
    return text


class RichProgress:
    """Context manager whose `callback(event, info)` reports training progress on `console`.

    On a terminal: one live bar per phase with loss, accuracy, sparsity, lambda and ETA.
    Elsewhere (CI logs, pipes): one plain line per epoch. `enabled=False` prints nothing.
    """

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self._task: Any = None
        self._offset = 0
        self._last: dict[str, Any] = {}
        self._eval = ""
        self._channels = False  # structure.kind=channel: progress in MAC speed-up

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def _print(self, text: str) -> None:
        self._progress.console.print(text, highlight=False, soft_wrap=True)

    def callback(self, event: str, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event == "stage":
            self._channels = self._channels or "groups" in info
            unit = "channel groups" if "groups" in info else "weights"
            made = {"factors": "factorized", "gates": "gated"}.get(info.get("method", ""), "pruned")
            count = info.get("groups", info.get("weights"))
            extra = f": {count} {unit} {made}" if count is not None else ""
            self._print(f"{info['stage']}{extra}")
        elif event == "phase":
            self._offset = info.get("first_step", 0)
            self._eval = ""
            if self.live:
                self._task = self._progress.add_task(
                    info["phase"], total=info["total_steps"], stats=""
                )
        elif event == "log":
            self._last = info
            if self._task is not None:
                self._progress.update(
                    self._task, completed=info["step"] - self._offset,
                    stats=_stats(info, self._channels) + self._eval,
                )  # fmt: skip
        elif event == "eval":
            self._eval = f" eval {info['eval_acc']:.1%}"
            if self._task is not None and "step" in info:
                self._progress.update(self._task, completed=info["step"] - self._offset)
            if not self.live:
                stats = _stats(self._last, self._channels) if self._last else ""
                self._print(f"{info['phase']} epoch {info['epoch']}: {stats}{self._eval}")
        elif event == "cut":
            self._print(
                f"cut to target: accuracy {info['before_cut']:.2%} -> {info['after_cut']:.2%}"
            )
        elif event == "diverged":
            self._print(
                f"[yellow]loss diverged[/]: restarting the epoch with learning rate x"
                f"{info['lr_factor']:g} (restart {info['retry']})"
            )
