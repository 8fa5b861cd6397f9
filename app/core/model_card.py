"""The model contract: what a model directory holds, shared by the exporter and the service.

A model directory has `model.onnx` and `model.json`:
- `model.onnx` takes one input, `features`, float32 [batch, F] (F = the feature spec's encoded
  width), and returns `revenue` and `cost`, float32 [batch, K], one column per treatment.
- `model.json` is the model card below: which treatments the K columns are, how raw request
  fields become the F inputs (`feature_spec`), and where the model came from.

Stdlib only, so training (which writes cards), the service (which reads and checks them) and
the benchmarks all use this one definition. Reading a card checks every field's type: a card
is input from a file on disk and must never become a nonsense registration.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1
INPUT = "features"
OUTPUTS = ("revenue", "cost")
OPSET = 17  # ONNX opset the exporter writes; onnxruntime reads it and newer ones
CARD_FILE = "model.json"
GRAPH_FILE = "model.onnx"
# A version names a directory under the models root: no separators, no leading dot.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CardError(ValueError):
    """A model card is missing a field or has a field of the wrong type or value."""


@dataclass(frozen=True)
class ModelCard:
    """model.json as a typed record; `to_json`/`from_json` are the only (de)serialisers."""

    version: str
    method: str
    treatments: tuple[str, ...]
    n_features: int
    feature_spec: dict[str, Any]
    outputs: dict[str, list[Any]]
    training_data: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    package_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def n_treatments(self) -> int:
        return len(self.treatments)

    @staticmethod
    def declared_outputs(n_treatments: int) -> dict[str, list[Any]]:
        """The `outputs` entry of a card for K treatments: both outputs [batch, K]."""
        return {name: ["batch", n_treatments] for name in OUTPUTS}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON dict, keys in the order of the fields."""
        data = asdict(self)
        data["treatments"] = list(self.treatments)
        return data

    @classmethod
    def from_json(cls, data: object) -> ModelCard:
        """Check and convert a parsed model.json; CardError names the first bad field."""
        if not isinstance(data, dict):
            raise CardError("must hold a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise CardError(f"lacks {missing}")
        if data["format_version"] != FORMAT_VERSION:
            raise CardError(f"format_version {data['format_version']!r} is not supported")
        version = _text(data, "version")
        if not VERSION_PATTERN.match(version):
            raise CardError(
                f"version {version!r} is not a valid name (letters, digits, '.', '_', '-'; "
                "not starting with a dot or dash; at most 128 characters)"
            )
        treatments = data["treatments"]
        if not isinstance(treatments, list) or not treatments:
            raise CardError("treatments must be a non-empty list of names")
        if not all(isinstance(t, str) and t for t in treatments):
            raise CardError("treatments must be a list of non-empty strings")
        if len(set(treatments)) != len(treatments):
            raise CardError(f"treatments repeat a name: {treatments}")
        n_features = data["n_features"]
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise CardError(f"n_features must be a positive integer, got {n_features!r}")
        outputs = data.get("outputs", cls.declared_outputs(len(treatments)))
        if not isinstance(outputs, dict) or not all(isinstance(v, list) for v in outputs.values()):
            raise CardError("outputs must map each output name to its shape, a list")
        return cls(
            version=version,
            method=_text(data, "method"),
            treatments=tuple(treatments),
            n_features=n_features,
            feature_spec=_object(data, "feature_spec"),
            outputs=outputs,
            training_data=_object(data, "training_data", required=False),
            validation=_object(data, "validation", required=False),
            config=_object(data, "config", required=False),
            created_at=_text(data, "created_at", required=False),
            package_version=_text(data, "package_version", required=False),
        )


# The one list of keys a card must have (the rest have defaults).
REQUIRED_KEYS = ("format_version", "version", "method", "treatments", "n_features", "feature_spec")


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise CardError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _object(data: dict[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        raise CardError(f"{key} must be a JSON object, got {type(value).__name__}")
    return value
