"""models.yaml -> model specs: the cross-encoders crossonnx answers for, by short name."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

_PACKAGED = Path(__file__).with_name("models.yaml")  # in a wheel
_IN_REPO = Path(__file__).resolve().parent.parent / "models.yaml"  # in a source checkout


@dataclass(frozen=True)
class ModelSpec:
    """One models.yaml entry."""

    name: str
    hub_id: str
    architecture: str
    shape: dict[str, Any]
    max_length: int
    activation: str
    task: str
    metric: dict[str, Any] = field(default_factory=dict)
    evidence: str = ""

    def summary(self) -> str:
        s = self.shape
        shape = f"{s['layers']}L-{s['hidden']}H-{s['heads']}A"
        value = self.metric.get("value")
        metric = f"{self.metric.get('name', '')} {value:.2f}" if value is not None else ""
        return f"{self.name:28s} {self.hub_id:44s} {self.architecture:8s} {shape:13s} {self.activation:9s} {metric}"


def registry_path() -> Path:
    return _PACKAGED if _PACKAGED.is_file() else _IN_REPO


@lru_cache(maxsize=1)
def load_registry() -> dict[str, ModelSpec]:
    """All models.yaml entries by name."""
    data = yaml.safe_load(registry_path().read_text(encoding="utf-8"))
    return {name: ModelSpec(name=name, **fields) for name, fields in data["models"].items()}


def find_model(name: str) -> ModelSpec | None:
    """The entry called ``name`` (or whose Hub id is ``name``), else None."""
    registry = load_registry()
    if name in registry:
        return registry[name]
    return next((spec for spec in registry.values() if spec.hub_id == name), None)

