"""dwfc: sparsify PyTorch models with Deep Weight Factorization and ship them.

Example:
    import dwfc
    dwfc.factorize_(model, depth=3)          # w -> w1 * w2 * w3, in place
    ...  # train with weight decay on the factors (an L_{2/3} penalty on w)
    dwfc.collapse_(model)                    # back to plain, sparse weights
"""

from dwfc._version import __version__
from dwfc.config import Recipe, load_recipe
from dwfc.errors import DwfcError, ExportCheckError, InputError
from dwfc.export import load_sparse, save_sparse
from dwfc.factorize import collapse_, factorize_, factorized_weights
from dwfc.fused import fuse_, unfuse_
from dwfc.pipeline import compress
from dwfc.report import RunReport
from dwfc.structure import load_pruned, plan_channels

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
    "fuse_",
    "load_pruned",
    "load_recipe",
    "load_sparse",
    "plan_channels",
    "save_sparse",
    "unfuse_",
]
