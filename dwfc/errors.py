"""dwfc's own errors. The CLI catches DwfcError once and exits with its `exit_code`."""


class DwfcError(Exception):
    """Base class: something dwfc could not do. Message is one line, shown to the user."""

    exit_code = 1


class InputError(DwfcError):
    """Bad input a user can fix: a file, a flag, a recipe key, a data spec."""

    exit_code = 2


class ExportCheckError(DwfcError):
    """An exported artefact failed its own check (ONNX checker or onnxruntime parity)."""

    exit_code = 5
