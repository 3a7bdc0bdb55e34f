"""lensml.config: YAML + pydantic loading with one clear ConfigError, and fuzzing."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lensml.config import ConfigError, dump_config, load_config, load_config_text
from lensml.train.config import TrainConfig


def write(tmp_path, text, name="train.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_round_trip(tmp_path):
    cfg = load_config(None, TrainConfig)
    assert cfg.optimizer.name == "AdamW" and cfg.precision == "32"
    text = dump_config(cfg)
    again = load_config(write(tmp_path, text), TrainConfig)
    assert again == cfg
    custom = load_config(
        {"optimizer": {"name": "rmsprop", "lr": 0.01, "momentum": 0.9}, "precision": 16},
        TrainConfig,
    )
    assert custom.optimizer.name == "RMSprop" and custom.precision == "16-mixed"
    back = load_config(write(tmp_path, dump_config(custom), "c.yaml"), TrainConfig)
    assert back == custom


def test_wrong_type_names_file_and_field(tmp_path):
    p = write(tmp_path, "optimizer:\n  lr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, TrainConfig)
    msg = str(info.value)
    assert str(p) in msg and "optimizer.lr" in msg and "number" in msg and "'fast'" in msg


def test_unknown_field_is_caught(tmp_path):
    p = write(tmp_path, "max_epoch: 3\noptimizer: {nam: Adam}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, TrainConfig)
    msg = str(info.value)
    assert "max_epoch: unknown field" in msg and "optimizer.nam: unknown field" in msg


def test_invalid_yaml_has_line(tmp_path):
    p = write(tmp_path, "max_epochs: 3\noptimizer:\n  lr: [1, 2\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, TrainConfig)
    msg = str(info.value)
    assert str(p) in msg and "invalid YAML" in msg and "line 4" in msg


def test_other_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml", TrainConfig)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"), TrainConfig)
    with pytest.raises(ConfigError, match=r"optimizer\.lr: expected a finite number"):
        load_config({"optimizer": {"lr": math.nan}}, TrainConfig)
    with pytest.raises(ConfigError, match="schedule"):
        load_config({"schedule": {"warmup_steps": 2, "warmup_epochs": 1}}, TrainConfig)
    with pytest.raises(ConfigError, match=r"optimizer\.betas"):
        load_config({"optimizer": {"betas": [0.9, 1.5]}}, TrainConfig)
    with pytest.raises(ConfigError, match="precision"):
        load_config({"precision": "8-bit"}, TrainConfig)
    with pytest.raises(ConfigError, match="python/object"):
        load_config_text("!!python/object/apply:os.system ['echo hi']", TrainConfig)
    assert isinstance(ConfigError("x"), ValueError)


def test_overrides_merge_nested():
    cfg = load_config(
        {"optimizer": {"lr": 0.1}}, TrainConfig, overrides={"optimizer": {"name": "Adam"}}
    )
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.name == "Adam"


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_keys = st.one_of(
    st.sampled_from(
        [
            "optimizer",
            "lr",
            "name",
            "schedule",
            "max_epochs",
            "betas",
            "ema",
            "decay",
            "loss",
            "precision",
            "seed",
            "batch_size",
            "warmup_steps",
            "early_stopping",
            "patience",
        ]
    ),
    st.text(max_size=6),
)
_structures = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_structures)
def test_fuzz_structures_only_config_error(data):
    try:
        cfg = load_config(data if isinstance(data, dict) else {"optimizer": data}, TrainConfig)
    except ConfigError as err:
        assert str(err).startswith("config")
    else:
        assert isinstance(cfg, TrainConfig)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab:- \n\t[]{}'\"!&*#|>%@`,?0.1e")), max_size=60))
def test_fuzz_yaml_text_only_config_error(text):
    try:
        load_config_text(text, TrainConfig)
    except ConfigError:
        pass


@settings(max_examples=40, deadline=None)
@given(data=st.dictionaries(_keys, _structures, max_size=4))
def test_fuzz_yaml_files_round_trip(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fz") / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    try:
        load_config(p, TrainConfig)
    except ConfigError as err:
        assert str(p) in str(err)
