"""Saved model directories: round trip, safe loading, one clear error for anything else."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from lensml.train import (
    ModelLoadError,
    Normalisation,
    build_network,
    load_model,
    predict,
    save_model,
)


def make_dir(tmp_path, name="model", **kw):
    net = build_network("toy-mlp", {"in_features": 3, "out_features": 2, "hidden": 4})
    norm = Normalisation(["mass", "conc"], [14.0, 5.0], [0.5, 2.0])
    path = save_model(
        tmp_path / name,
        net.state_dict(),
        "toy-mlp",
        net.config,
        norm,
        train_config={"input_key": "image"},
        input_shape=[3],
        **kw,
    )
    return net, path


def test_round_trip_and_denormalised_predictions(tmp_path):
    net, path = make_dir(tmp_path)
    assert sorted(os.listdir(path)) == [
        "lensml_version",
        "model.json",
        "normalisation.json",
        "weights.pt",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left
    loaded, info = load_model(path)
    assert info.normalisation.label_names == ["mass", "conc"] and not loaded.training
    x = torch.randn(5, 3)
    raw = net(x).detach()
    expect = raw * torch.tensor([0.5, 2.0]) + torch.tensor([14.0, 5.0])
    assert torch.allclose(predict(path, x, batch_size=2), expect, atol=1e-6)
    weights = torch.load(path / "weights.pt", weights_only=True)
    assert set(weights) == set(net.state_dict())
    # overwriting is atomic and leaves one directory
    make_dir(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_not_a_model_errors_name_the_file(tmp_path):
    make_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="no such"):
        load_model(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"model\.json: missing"):
        load_model(empty)

    def broken(name, edit):
        _, p = make_dir(tmp_path, name)
        edit(p)
        return p

    p = broken("badjson", lambda p: (p / "model.json").write_text("{not json"))
    with pytest.raises(ModelLoadError, match=r"model\.json: not valid JSON"):
        load_model(p)
    p = broken("wrongkeys", lambda p: (p / "model.json").write_text(json.dumps({"format": "x"})))
    with pytest.raises(ModelLoadError, match=r"model\.json: not a lensml model"):
        load_model(p)

    def unknown_net(p):
        meta = json.loads((p / "model.json").read_text())
        meta["network"]["name"] = "no-such-net"
        (p / "model.json").write_text(json.dumps(meta))

    with pytest.raises(ModelLoadError, match="unknown network 'no-such-net'"):
        load_model(broken("unknown", unknown_net))
    p = broken("norm", lambda p: (p / "normalisation.json").write_text('{"mean": [1]}'))
    with pytest.raises(ModelLoadError, match=r"normalisation\.json: missing key"):
        load_model(p)

    def other_weights(p):
        torch.save(torch.nn.Linear(7, 1).state_dict(), p / "weights.pt")

    with pytest.raises(ModelLoadError, match=r"weights\.pt: weights do not match network"):
        load_model(broken("mismatch", other_weights))
    with pytest.raises(ModelLoadError, match=r"weights\.pt: not a readable"):
        load_model(broken("garbage", lambda p: (p / "weights.pt").write_bytes(b"garbage")))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    _, p = make_dir(tmp_path)
    torch.save({"w": Evil()}, p / "weights.pt")
    with pytest.raises(ModelLoadError, match=r"weights\.pt: refused to load"):
        load_model(p)
    ckpt = tmp_path / "random.ckpt"
    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(ModelLoadError, match=r"random\.ckpt"):
        load_model(ckpt)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, plain)
    with pytest.raises(ModelLoadError, match=r"plain\.ckpt: not a lensml model"):
        load_model(plain)


def test_build_network_and_normalisation_errors():
    with pytest.raises(ValueError, match="unknown network"):
        build_network("nope")
    with pytest.raises(ValueError, match="invalid config"):
        build_network("toy-mlp", {"widthh": 3})
    with pytest.raises(ValueError, match="std"):
        Normalisation(["a"], [0.0], [0.0])
    norm = Normalisation(["a", "b"], [1.0, 2.0], [3.0, 4.0], input_mean=0.5, input_std=2.0)
    assert Normalisation.from_dict(json.loads(norm.to_json())) == norm
    y = torch.randn(4, 2, 3, 3)
    assert torch.allclose(norm.denormalise(norm.normalise(y)), y, atol=1e-6)
