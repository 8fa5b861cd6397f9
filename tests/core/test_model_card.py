"""The model contract: a card round-trips through JSON, and a crafted card is refused by field."""

from __future__ import annotations

import json

import pytest

from app.core.model_card import REQUIRED_KEYS, CardError, ModelCard

GOOD = {
    "format_version": 1,
    "version": "20261201-000000-tsm-rct-abc123",
    "method": "tsm-rct",
    "treatments": ["control", "email"],
    "n_features": 3,
    "feature_spec": {"numeric": ["a", "b", "c"], "categorical": {}},
    "outputs": {"revenue": ["batch", 2], "cost": ["batch", 2]},
}


def test_round_trip_keeps_every_field() -> None:
    card = ModelCard.from_json(json.loads(json.dumps(GOOD)))
    assert card.n_treatments == 2 and card.treatments == ("control", "email")
    again = ModelCard.from_json(json.loads(json.dumps(card.to_json())))
    assert again == card
    assert set(REQUIRED_KEYS) <= set(card.to_json())


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_each_required_key_is_required(key: str) -> None:
    with pytest.raises(CardError, match=key):
        ModelCard.from_json({k: v for k, v in GOOD.items() if k != key})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"treatments": 5}, "treatments"),
        ({"treatments": "abcde"}, "treatments"),  # a string is not five treatments
        ({"treatments": []}, "treatments"),
        ({"treatments": ["a", 1]}, "treatments"),
        ({"treatments": ["a", "a"]}, "treatments"),
        ({"outputs": 3}, "outputs"),
        ({"outputs": "revenue"}, "outputs"),
        ({"version": None}, "version"),
        ({"version": "../escape"}, "version"),
        ({"version": ".hidden"}, "version"),
        ({"n_features": True}, "n_features"),
        ({"n_features": 0}, "n_features"),
        ({"method": 7}, "method"),
        ({"feature_spec": []}, "feature_spec"),
        ({"validation": "good"}, "validation"),
        ({"format_version": 2}, "format_version"),
    ],
)
def test_a_crafted_card_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(CardError, match=field):
        ModelCard.from_json({**GOOD, **change})


def test_not_an_object_is_refused() -> None:
    with pytest.raises(CardError, match="JSON object"):
        ModelCard.from_json(["not", "a", "card"])
