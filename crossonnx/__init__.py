"""crossonnx: cross-encoder rerankers exported to ONNX and run without PyTorch.

>>> from crossonnx import CrossEncoder
>>> model = CrossEncoder("models/ms-marco-TinyBERT-L-6")
>>> model.predict([("how many people live in berlin", "Berlin has 3.5 million inhabitants.")])
"""

from crossonnx.encoder import CrossEncoder
from crossonnx.errors import (
    CrossOnnxError,
    ExportError,
    InvalidInputError,
    ModelFolderError,
    PrecisionNotExportedError,
    ProviderUnavailableError,
    UnknownModelError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "CrossEncoder",
    "CrossOnnxError",
    "ExportError",
    "InvalidInputError",
    "ModelFolderError",
    "PrecisionNotExportedError",
    "ProviderUnavailableError",
    "UnknownModelError",
    "ValidationError",
    "__version__",
]
