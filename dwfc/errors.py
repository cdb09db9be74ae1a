"""dwfc's own errors, each with its exit code. The CLI catches DwfcError once and exits with the
error's `exit_code`; docs/cli.md's table of exit codes is generated from `EXIT_CODES` below."""

from __future__ import annotations

from typing import ClassVar

KEY_MARK = "\x1f"  # brackets a recipe key or `compress` argument inside an error message


def named(key: str) -> str:
    """A recipe key ("data.source") or `compress` argument ("out_dir") as an error message names
    it: `str(error)` shows it as it is, the command line shows its flag (dwfc/cli/text.py).

    Example:
        raise InputError(f"{named('data.source')} cifar10 needs {named('data.root')}")
    """
    return f"{KEY_MARK}{key}{KEY_MARK}"


class DwfcError(Exception):
    """Base class: something dwfc could not do. Message is one line, shown to the user."""

    exit_code: ClassVar[int] = 1
    meaning: ClassVar[str] = (
        "internal error: a bug in dwfc or a library (a Python traceback is printed)"
    )

    def __str__(self) -> str:
        return self.marked().replace(KEY_MARK, "")

    def marked(self) -> str:
        """The message with the keys it names bracketed by KEY_MARK (see `named`)."""
        return super().__str__()


class InputError(DwfcError):
    """Bad input a user can fix: a file, a flag, a recipe key, a data spec."""

    exit_code = 2
    meaning = (
        "bad input: a missing or unreadable file, a pickle that needs `--trust-model`, an "
        "unknown data source or recipe key, a value out of range, an output folder that cannot "
        "be written, a model that does not fit the data"
    )


class OutputError(DwfcError):
    """The outputs could not be written (disk full, permissions, ...)."""

    exit_code = InputError.exit_code  # its meaning is listed with InputError's


class QualityGateFailed(DwfcError):
    """The run finished and wrote its report, but a quality gate failed."""

    exit_code = 3
    meaning = (
        "a quality gate (`--max-accuracy-drop`, `--min-sparsity`) failed; the outputs and the "
        "report are still written, and the report shows why"
    )


class TrainingDiverged(DwfcError):
    """The loss became NaN or infinite, and restarts with smaller learning rates did not help."""

    exit_code = 4
    meaning = (
        "training diverged (loss NaN or infinite) even after restarts with halved learning "
        "rates; the last good checkpoint is kept in `--out/checkpoint.pt`"
    )


class ExportCheckError(DwfcError):
    """An exported artefact failed its own check (ONNX checker or onnxruntime parity)."""

    exit_code = 5
    meaning = (
        "an exported file failed its own check (safetensors round trip, ONNX checker or "
        "onnxruntime parity)"
    )


class VerificationError(DwfcError):
    """`dwfc verify` found a mismatch between an output folder's files and its report."""

    exit_code = 6
    meaning = "`dwfc verify` found a mismatch"


class Interrupted(DwfcError):
    """Stopped by SIGINT/SIGTERM (after saving a checkpoint, when checkpoints are on)."""

    exit_code = 130
    meaning = (
        "interrupted (Ctrl-C or SIGTERM): the checkpoint is saved, continue with `--resume`; "
        "a second Ctrl-C stops at once"
    )


EXIT_CODES: tuple[tuple[int, str], ...] = ((0, "success"),) + tuple(
    (cls.exit_code, cls.meaning)
    for cls in (DwfcError, InputError, QualityGateFailed, TrainingDiverged, ExportCheckError,
                VerificationError, Interrupted)
)  # fmt: skip


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none.

    Example:
        first_line(ValueError("bad shape\\nmore detail"))  # 'bad shape'
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
