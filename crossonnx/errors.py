"""The few typed errors crossonnx raises. Each message names the problem and the fix.

Importing this module imports nothing else (no onnxruntime, no numpy), so any layer can raise these.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class CrossOnnxError(Exception):
    """Base class of every error crossonnx raises on purpose."""


class InvalidInputError(CrossOnnxError, TypeError):
    """The pairs passed to ``predict``/``rank`` are not what a cross-encoder takes."""


_NO_VALUE = object()


class InvalidOptionError(CrossOnnxError, ValueError):
    """An option has a value it cannot take (e.g. a ``LongDocuments`` field); ``field`` names the option.

    ``rule`` is what the value must be and ``value`` what it was, so that a caller can say the same in its own
    terms (the server names the JSON field, the command line its flag).
    """

    def __init__(self, field: str, rule: str, value: object = _NO_VALUE, message: str | None = None):
        self.field = field
        self.rule = rule
        self.value = None if value is _NO_VALUE else value
        self.has_value = value is not _NO_VALUE
        if message is None:
            message = f"{field} {rule}" + (f", got {value!r}" if value is not _NO_VALUE else "")
        super().__init__(message)

    def __reduce__(self) -> tuple:  # picklable (Ray sends errors between processes)
        if self.has_value:
            return (type(self), (self.field, self.rule, self.value, str(self)))
        return (_option_error_without_value, (type(self), self.field, self.rule, str(self)))


def _option_error_without_value(cls: type, field: str, rule: str, message: str) -> InvalidOptionError:
    return cls(field, rule, message=message)


SHOWN_PAIRS = 3  # pairs a DocumentCappedError details; it counts the rest


class DocumentCappedError(InvalidOptionError):
    """Chunk mode with ``on_capped="raise"`` met second texts longer than the cap (``max_document_tokens``).

    ``indexes``: those pairs (positions in the input); ``covered``: the tokens of each the windows would read;
    ``tokens``: the tokens each has. ``field`` is ``"max_document_tokens"``, the option to raise.
    """

    def __init__(self, indexes: list[int], covered: list[int], tokens: list[int], count: int):
        self.indexes, self.covered, self.tokens, self.count = list(indexes), list(covered), list(tokens), count
        if len(indexes) == 1:
            which = f"the first {covered[0]} of the {tokens[0]} tokens of pair {indexes[0]}'s second text"
        else:
            shown = "; ".join(
                f"pair {i}: {c} of its {t} tokens"
                for i, c, t in zip(indexes[:SHOWN_PAIRS], covered[:SHOWN_PAIRS], tokens[:SHOWN_PAIRS], strict=True)
            )
            more = f"; and {len(indexes) - SHOWN_PAIRS} more" if len(indexes) > SHOWN_PAIRS else ""
            which = f"the first tokens of the second texts of {len(indexes)} of {count} pairs ({shown}{more})"
        message = (
            f"chunk mode would read only {which}: the windows stop at max_document_tokens (by default 10 x the "
            f"window that fits beside the query). Pass LongDocuments('chunk', max_document_tokens={max(tokens)}, ...) "
            "to read them whole, or on_capped='flag' to score their first tokens and flag them capped "
            "(predict_details, rank)"
        )
        super().__init__("max_document_tokens", "must cover every second text, or on_capped='flag'", message=message)

    def __reduce__(self) -> tuple:  # picklable (Ray sends errors between processes)
        return (type(self), (self.indexes, self.covered, self.tokens, self.count))


class MovedArgumentError(CrossOnnxError, TypeError):
    """A keyword argument that moved: the message names the call to write instead."""


class ModelFolderError(CrossOnnxError, FileNotFoundError):
    """A model folder is missing, incomplete or corrupt."""


class UnknownModelError(CrossOnnxError, KeyError):
    """A model name that is neither in models.yaml, a local folder nor a Hub id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PrecisionNotExportedError(CrossOnnxError, ValueError):
    """The requested precision is not in the model folder, or the chosen engine cannot run it."""


class ProviderUnavailableError(CrossOnnxError, RuntimeError):
    """The requested execution provider (engine) is not installed or not usable."""


class MissingExtraError(CrossOnnxError, ImportError):
    """An optional dependency is not installed; the message names the exact ``pip install`` command."""


class ScaleError(CrossOnnxError, ValueError):
    """A file or dataset cannot be scored as asked (missing column, non-text cell, output exists, ...)."""


class ExportError(CrossOnnxError, RuntimeError):
    """An export could not be carried out (bad source, unsupported model)."""


class ValidationError(ExportError):
    """An exported variant disagrees with PyTorch beyond its threshold; nothing was written."""


def install_command(extra: str) -> str:
    """The exact command that installs one of crossonnx's extras."""
    return f'pip install "crossonnx[{extra}]"'


def missing_extra(extra: str, package: str, what: str = "this") -> MissingExtraError:
    """The error for a dependency that lives in an optional extra."""
    return MissingExtraError(
        f"{what} needs {package}, which is not installed. Install it with: {install_command(extra)}"
    )


def require_module(module: str, extra: str, package: str | None = None, what: str = "this") -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(extra, package or module, what) from None
