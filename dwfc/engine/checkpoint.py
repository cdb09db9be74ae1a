"""Checkpoints for resuming, and the Ctrl-C / SIGTERM handling that writes one before stopping."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from dwfc._atomic import atomic_path
from dwfc.errors import InputError, first_line, named

FORMAT_VERSION = 2  # 2: one engine for every method, its state under "method"


def rng_state(loader_generator: torch.Generator | None) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically: a reader never sees a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT_VERSION, **payload}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (only tensors and plain data: safe load)."""
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so in one line
        raise InputError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise InputError(f"{path} is not a dwfc checkpoint of format {FORMAT_VERSION}")
    return payload


class StopRequest:
    """First SIGINT/SIGTERM: ask training to checkpoint and stop. Second: abort at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def load_for_resume(path: Path, recipe_dump: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at `path`, refused when it was made with other training settings
    (sections other than export and gates).

    Example:
        payload = load_for_resume(out / CHECKPOINT, recipe.model_dump(mode="json"))
    """
    payload = load_checkpoint(path)
    saved = payload["recipe"]
    for section, values in recipe_dump.items():
        for key, value in values.items():
            if section not in ("export", "gates") and saved.get(section, {}).get(key) != value:
                was = saved.get(section, {}).get(key)
                raise InputError(
                    f"{named('resume=True')}: recipe key '{section}.{key}' is {value!r} but the "
                    f"checkpoint was made with {was!r}; resume with the same settings"
                )
    return payload
