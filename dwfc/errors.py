"""dwfc's own errors. The CLI catches DwfcError once and exits with its `exit_code`."""


class DwfcError(Exception):
    """Base class: something dwfc could not do. Message is one line, shown to the user."""

    exit_code = 1


class InputError(DwfcError):
    """Bad input a user can fix: a file, a flag, a recipe key, a data spec."""

    exit_code = 2


class OutputError(DwfcError):
    """The outputs could not be written (disk full, permissions, ...)."""

    exit_code = 2


class QualityGateFailed(DwfcError):
    """The run finished and wrote its report, but a quality gate failed."""

    exit_code = 3


class ExportCheckError(DwfcError):
    """An exported artefact failed its own check (ONNX checker or onnxruntime parity)."""

    exit_code = 5


class TrainingDiverged(DwfcError):
    """The loss became NaN or infinite, and restarts with smaller learning rates did not help."""

    exit_code = 4


class Interrupted(DwfcError):
    """Stopped by SIGINT/SIGTERM (after saving a checkpoint, when checkpoints are on)."""

    exit_code = 130
