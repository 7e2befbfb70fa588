"""Dotted overrides: strict keys with suggestions, typed values."""

import pytest

from pdeaccel.config import ConfigError, apply_overrides, config_hash, flatten

CFG = {"train": {"epochs": 10, "lr": 1e-3, "progress": True}, "solver": {"method": "cg"}, "net": {"sizes": [1, 2]}}


def test_overrides_parse_to_the_default_type():
    out = apply_overrides(CFG, ["train.epochs=20", "train.lr=0.5", "train.progress=false", "solver.method=gmres",
                                "net.sizes=[3, 4]"])
    assert out["train"] == {"epochs": 20, "lr": 0.5, "progress": False}
    assert out["solver"]["method"] == "gmres" and out["net"]["sizes"] == [3, 4]
    assert CFG["train"]["epochs"] == 10  # the input is not modified


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Did you mean train.epochs"):
        apply_overrides(CFG, ["train.epoch=3"])


@pytest.mark.parametrize("item, fragment", [("train.epochs=ten", "expected an integer"),
                                            ("train.lr=fast", "expected a number"),
                                            ("train.progress=maybe", "expected a boolean"),
                                            ("train.epochs", "key=value"),
                                            ("net.sizes=3", "expected a list")])
def test_bad_values_name_the_key(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides(CFG, [item])


def test_hash_ignores_key_order_and_sees_values():
    a = {"x": 1, "y": {"z": 2}}
    b = {"y": {"z": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({"x": 1, "y": {"z": 3}})
    assert flatten(a) == {"x": 1, "y.z": 2}
