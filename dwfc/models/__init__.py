"""Loading the user's model: reading the file (files.py), building the architecture and fitting
the state dict to it (load.py). The reference models for the bundled data are in dwfc/zoo.py."""

from dwfc.models.load import (
    build_model,
    count_parameters,
    find_weights,
    import_object,
    load_model,
    load_model_with_notes,
)

__all__ = ["build_model", "count_parameters", "find_weights", "import_object", "load_model",
           "load_model_with_notes"]  # fmt: skip
