"""Activations applied to the model's logits, as sentence-transformers applies them, in numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]
Activation = str | ScoreFn | None  # what ``activation_fn=`` takes: a name, a callable, a torch.nn module, None


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative argument only, so no overflow warning for large |x|
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def identity(x: np.ndarray) -> np.ndarray:
    return x


ACTIVATION_FNS: dict[str, ScoreFn] = {
    "sigmoid": sigmoid,
    "identity": identity,
    "tanh": np.tanh,
    "softmax": softmax,
}

# torch.nn module class name -> our name, so ``activation_fn=torch.nn.Identity()`` works without torch here
_TORCH_CLASS_NAMES = {name.capitalize(): name for name in ACTIVATION_FNS}  # Sigmoid, Identity, Tanh, Softmax


def activation_name_from_path(path: str) -> str | None:
    """'torch.nn.modules.activation.Sigmoid' -> 'sigmoid'; None for anything we do not implement."""
    if not path.startswith("torch."):
        return None
    return _TORCH_CLASS_NAMES.get(path.rsplit(".", 1)[-1])


def resolve_activation(activation: str | ScoreFn | object) -> ScoreFn:
    """A name, a numpy callable, or a torch.nn activation module -> a numpy function."""
    if isinstance(activation, str):
        try:
            return ACTIVATION_FNS[activation.lower()]
        except KeyError:
            known = ", ".join(ACTIVATION_FNS)
            raise ValueError(f"unknown activation {activation!r}; use one of: {known}, or a callable") from None
    cls = type(activation)
    if cls.__module__.startswith("torch.") and cls.__name__ in _TORCH_CLASS_NAMES:
        return ACTIVATION_FNS[_TORCH_CLASS_NAMES[cls.__name__]]
    if callable(activation):
        return activation  # type: ignore[return-value]
    raise TypeError(f"activation_fn must be a name, a callable or a torch.nn activation, got {cls.__name__}")
