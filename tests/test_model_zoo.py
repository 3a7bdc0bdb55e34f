"""Every shipped model reproduces its model card's CI metrics; names resolve offline."""

from __future__ import annotations

import math

import pytest

from lensml.models import check_model, list_models, resolve_model

MODELS = list_models()


def test_zoo_is_not_empty_and_cards_are_complete():
    assert {m.pipeline for m in MODELS} >= {"shear", "sersic"}
    for m in MODELS:
        for key in ("training_data", "heldout_metrics", "intended_inputs", "ci_check"):
            assert key in m.card, (m.path, key)
        assert (m.path / "weights.pt").stat().st_size < 20 * 2**20  # ≤ 20 MB per file


@pytest.mark.parametrize("entry", MODELS, ids=[f"{m.pipeline}/{m.name}" for m in MODELS])
def test_shipped_model_reproduces_its_card(entry):
    check = entry.card["ci_check"]
    tol = check["tolerance"]
    got = check_model(entry)
    assert set(got) == set(check["metrics"])
    for key, want in check["metrics"].items():
        assert math.isclose(got[key], want, rel_tol=tol["rel"], abs_tol=tol["abs"]), (key, got)


def test_names_resolve_and_unknown_names_list_the_zoo(tmp_path):
    shear = resolve_model("shear-cnn")
    assert (shear / "model.json").is_file()
    assert resolve_model("shear/shear-cnn", "shear") == shear
    assert resolve_model(tmp_path) == tmp_path  # an existing path is taken as is
    with pytest.raises(ValueError, match=r"shipped.*shear/shear-cnn"):
        resolve_model("no-such-model")
