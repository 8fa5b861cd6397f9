"""OnnxModel: load a model directory, check it against its model.json, predict with onnxruntime."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.core.features import FeatureSpec
from app.core.model_card import CARD_FILE, GRAPH_FILE, INPUT, OUTPUTS, CardError, ModelCard
from app.errors import InvalidModel

# One batch size that is not a "natural" export size, so a graph with a frozen batch fails here.
_PROBE_ROWS = 3


def read_card(directory: Path) -> ModelCard:
    """The directory's model card, checked field by field (InvalidModel names the field)."""
    path = directory / CARD_FILE
    if not path.is_file():
        raise InvalidModel(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"{path} is not readable JSON: {exc}") from None
    try:
        return ModelCard.from_json(data)
    except CardError as exc:
        raise InvalidModel(f"{path}: {exc}") from None


def file_sha256(path: Path) -> str:
    """Fingerprint of the served graph, stored with the version for auditing."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class OnnxModel:
    """One loaded, checked model version; `predict` is safe to call from many threads."""

    version: str
    method: str
    treatments: tuple[str, ...]
    spec: FeatureSpec
    card: ModelCard
    path: Path
    session: ort.InferenceSession

    @property
    def n_treatments(self) -> int:
        return len(self.treatments)

    @classmethod
    def load(cls, directory: Path, *, threads: int = 1) -> OnnxModel:
        """Load and check files, graph signature and output shapes against model.json."""
        card = read_card(directory)
        onnx_path = directory / GRAPH_FILE
        if not onnx_path.is_file():
            raise InvalidModel(f"{onnx_path} is missing")
        try:
            spec = FeatureSpec.from_json(card.feature_spec)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidModel(f"{directory}/{CARD_FILE}: feature_spec: {exc}") from None
        if card.n_features != spec.n_features:
            raise InvalidModel(
                f"{directory}/{CARD_FILE}: n_features {card.n_features} but the feature spec "
                f"encodes {spec.n_features}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads burn CPU between requests on a shared machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidModel(f"{onnx_path} does not load: {exc}") from None
        model = cls(
            version=card.version,
            method=card.method,
            treatments=card.treatments,
            spec=spec,
            card=card,
            path=directory,
            session=session,
        )
        model._check_signature()
        return model

    def _check_signature(self) -> None:
        """Input/output names, dtypes and shapes must match the contract and model.json."""
        where = self.path / "model.onnx"
        inputs = {i.name: i for i in self.session.get_inputs()}
        if list(inputs) != [INPUT]:
            raise InvalidModel(f"{where}: inputs {list(inputs)}, expected [{INPUT!r}]")
        shape = inputs[INPUT].shape
        if inputs[INPUT].type != "tensor(float)" or len(shape) != 2:
            raise InvalidModel(f"{where}: input {INPUT!r} must be float32 [batch, F], got {shape}")
        if isinstance(shape[1], int) and shape[1] != self.spec.n_features:
            raise InvalidModel(
                f"{where}: input width {shape[1]} but model.json has {self.spec.n_features}"
            )
        names = {o.name for o in self.session.get_outputs()}
        if not set(OUTPUTS) <= names:
            raise InvalidModel(f"{where}: outputs {sorted(names)} lack {list(OUTPUTS)}")
        declared = self.card.outputs
        probe = np.zeros((_PROBE_ROWS, self.spec.n_features), dtype=np.float32)
        try:
            got = self.session.run(list(OUTPUTS), {INPUT: probe})
        except Exception as exc:
            raise InvalidModel(f"{where} fails on a probe batch: {exc}") from None
        want = (_PROBE_ROWS, self.n_treatments)
        for name, out in zip(OUTPUTS, got, strict=True):
            if out.shape != want:
                raise InvalidModel(
                    f"{where}: output {name!r} has shape {out.shape} for {_PROBE_ROWS} rows, "
                    f"model.json declares {len(self.treatments)} treatments -> {want}"
                )
            spec_shape = declared.get(name)
            if spec_shape is not None and list(spec_shape)[1:] != [self.n_treatments]:
                raise InvalidModel(
                    f"{where}: model.json outputs.{name} = {spec_shape} disagrees with "
                    f"{self.n_treatments} treatments"
                )

    def predict_columns(
        self, columns: Mapping[str, Any]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Raw feature columns (a DataFrame or name -> (N,) array) -> revenue, cost (N, K).

        Encodes column-wise with the model's own spec, as every batch path (evaluation,
        retraining comparisons, simulations) must, so they all score exactly as the service.
        """
        x = self.spec.encode(columns)  # a missing column is a FeatureError naming it
        return self.predict(np.ascontiguousarray(x, dtype=np.float32))

    def predict(
        self, features: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Encoded features (N, F) -> expected revenue (N, K), cost (N, K) as float64."""
        revenue, cost = self.session.run(list(OUTPUTS), {INPUT: features})
        return revenue.astype(np.float64), cost.astype(np.float64)
