"""dwfc: sparsify PyTorch models with Deep Weight Factorization and ship them.

Example:
    import dwfc
    dwfc.factorize_(model, depth=3)          # w -> w1 * w2 * w3, in place
    ...  # train with weight decay on the factors (an L_{2/3} penalty on w)
    dwfc.collapse_(model)                    # back to plain, sparse weights
"""

__version__ = "0.1.0"

from dwfc.config import Recipe, load_recipe  # noqa: E402
from dwfc.errors import DwfcError, ExportCheckError, InputError  # noqa: E402
from dwfc.export import load_sparse, save_sparse  # noqa: E402
from dwfc.factorize import collapse_, factorize_, factorized_weights  # noqa: E402
from dwfc.pipeline import compress  # noqa: E402
from dwfc.report import RunReport  # noqa: E402

__all__ = [
    "DwfcError",
    "ExportCheckError",
    "InputError",
    "Recipe",
    "RunReport",
    "__version__",
    "collapse_",
    "compress",
    "factorize_",
    "factorized_weights",
    "load_recipe",
    "load_sparse",
    "save_sparse",
]
