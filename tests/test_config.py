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


def test_declared_ranges_name_the_key_the_value_and_what_is_allowed():
    from pdeaccel.config import check_ranges, flag, integer_in, number_in, one_of

    ranges = {"a.n": integer_in(1, 8, note="cells"), "a.x": number_in(positive=True), "b.mode": one_of("p", "q"),
              "b.on": flag(), "b.absent": integer_in(0)}
    good = {"a": {"n": 8, "x": 0.5}, "b": {"mode": "q", "on": False}}
    check_ranges(good, ranges)  # a key the config does not hold is not required
    for key, bad, allowed in [("a.n", True, r"an integer in \[1, 8\] \(cells\)"), ("a.n", 9, r"an integer in \[1, 8\]"),
                              ("a.x", float("inf"), "a finite number > 0"), ("a.x", 0, "a finite number > 0"),
                              ("b.mode", "r", "p, q"), ("b.on", 1, "true or false")]:
        cfg = {"a": dict(good["a"]), "b": dict(good["b"])}
        head, leaf = key.split(".")
        cfg[head][leaf] = bad
        with pytest.raises(ConfigError, match=rf"config key '{key}' has value {bad!r}; allowed: {allowed}"):
            check_ranges(cfg, ranges)


def test_a_flow_experiment_checks_its_declared_ranges():
    from pdeaccel.experiments import runner
    from pdeaccel.experiments.flow import validate_flow

    validate_flow(runner.resolve_config("flow-2d", "cpu", []))
    for override, key in [("pool.young=-1", "pool.young"), ("physics.dt=0.0", "physics.dt"),
                          ("model.gauge=rigid", "model.gauge"), ("loss.unroll=33", "loss.unroll")]:
        with pytest.raises(ConfigError, match=f"'{key}' has value"):
            validate_flow(runner.resolve_config("flow-2d", "cpu", [override]))


@pytest.mark.parametrize("name, override, key", [("heat-1d", "physics.scheme=leapfrog", "physics.scheme"),
                                                 ("burgers-1d", "physics.picard_iterations=0", "physics.picard_iterations"),
                                                 ("ns-2d", "physics.factor=17", "physics.factor"),
                                                 ("flow-2d", "model.window=0", "model.window"),
                                                 ("heat-2d", "physics.n=5000", "physics.n")])
def test_each_experiment_declares_its_own_ranges_and_resolving_checks_them(name, override, key):
    from pdeaccel.experiments import runner
    from pdeaccel.experiments.registry import SHARED_RANGES, get_experiment

    exp = get_experiment(name)
    assert key in exp.ranges or key in SHARED_RANGES
    with pytest.raises(ConfigError, match=f"config key '{key}' has value .*; allowed: "):
        runner.resolve_config(name, "cpu", [override])
