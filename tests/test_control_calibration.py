"""Output calibration of a learned model for control (experiments/control_calibration.py), on a toy
'flow' whose probe oscillates at a known frequency of the control, so the answer is exact."""

import math

import pytest
import torch

from pdeaccel.control import ControlSettings, optimise
from pdeaccel.experiments.control_calibration import calibrated_optimise


class _Env:
    names = ("rate",)
    bounds = {"rate": (0.1, 3.0)}

    def __call__(self, controls):
        return dict(controls)


class _Sim:
    """The probe oscillates at f = bias·0.02·rate^1.1 (bias 1: the 'numerical' truth)."""

    def __init__(self, bias=1.0):
        self.bias = bias

    def bind(self, env, probe):
        rate, bias = env["rate"], self.bias

        class Bound:
            samples_per_call, steps_per_call, sample_dt = 1, 1, 1.0

            def rest(self):
                return (torch.zeros(1, dtype=torch.float64),)

            def step(self, state):
                (t,) = state
                f = bias * 0.02 * torch.as_tensor(rate, dtype=torch.float64) ** 1.1
                return (t + 1,), torch.sin(2 * math.pi * f * t + 0.4)[:, None]

        return Bound()


SETTINGS = ControlSettings(warmup=3, window=200, iterations=10, tolerance=0.005)


def _truth(rate):
    return 0.02 * rate ** 1.1


@pytest.mark.parametrize("target", [0.018, 0.026])
def test_a_biased_model_misses_and_calibration_corrects_it(target):
    model, truth = _Sim(bias=1.2), _Sim()
    plain = optimise(model, _Env(), {"rate": 1.0}, target, None, SETTINGS)
    miss = (_truth(plain.best["rate"]) - target) / target
    assert miss == pytest.approx(1 / 1.2 - 1, abs=0.02)  # the model's 20% bias, as seen by the truth

    res = calibrated_optimise(model, truth, _Env(), None, SETTINGS, target, {"rate": 1.0}, rounds=3, tolerance=0.02)
    f_true = _truth(res.control["rate"])
    assert abs(f_true - target) <= 0.02 * target
    assert float(res.check.frequency) == pytest.approx(f_true, rel=0.01)  # the verifier measured it
    r0, r1 = res.rounds[0], res.rounds[1]
    assert r0["model_target"] == target
    # the next round's model target is the last one times the numerical miss ratio
    assert r1["model_target"] == pytest.approx(r0["model_target"] * target / r0["frequency_numerical"])
    assert r1["model_target"] == pytest.approx(1.2 * target, rel=0.02)
    assert res.history and all("round" in h for h in res.history)
    assert res.numerical_seconds > 0 and res.model_seconds > 0


def test_no_correction_when_the_first_optimum_is_within_tolerance_and_rounds_zero_is_the_plain_protocol():
    res = calibrated_optimise(_Sim(), _Sim(), _Env(), None, SETTINGS, 0.022, {"rate": 1.0}, rounds=3, tolerance=0.02)
    assert len(res.rounds) == 1
    plain = calibrated_optimise(_Sim(1.2), _Sim(), _Env(), None, SETTINGS, 0.022, {"rate": 1.0}, rounds=0,
                                tolerance=0.02)
    assert len(plain.rounds) == 1 and abs(plain.rounds[0]["error_numerical"]) > 0.1


def test_the_result_is_the_round_closest_to_the_target():
    # a model whose bias flips with the control: a correction can make things worse; the best round is kept
    class Flipping(_Sim):
        def bind(self, env, probe):
            self.bias = 1.3 if env["rate"] < 1.0 else 0.6
            return super().bind(env, probe)

    res = calibrated_optimise(Flipping(), _Sim(), _Env(), None, SETTINGS, 0.02, {"rate": 0.8}, rounds=2,
                              tolerance=0.001)
    errors = [abs(r["error_numerical"]) for r in res.rounds]
    assert abs(float(res.check.frequency) - 0.02) / 0.02 == pytest.approx(min(errors), abs=1e-9)


def test_pdeaccel_control_with_calibration_writes_its_rounds(tmp_path):
    import json

    from pdeaccel.cli import main
    from test_control import TINY, _untrained_run

    run = _untrained_run(tmp_path)
    out = tmp_path / "out"
    args = ["control", "inflow", "--model", str(run), "--target", "0.06", "--out", str(out), "--quiet", *TINY,
            "require_shedding=false", "calibration.rounds=1", "calibration.tolerance=0.001"]
    assert main(args) == 0
    (row,) = json.loads((out / "report.json").read_text())["targets"]
    rounds = row["calibration_rounds"]
    assert 1 <= len(rounds) <= 2 and rounds[0]["model_target"] == 0.06
    if len(rounds) == 2:  # corrected by the first round's numerical miss
        assert rounds[1]["model_target"] == pytest.approx(0.06 * 0.06 / rounds[0]["frequency_numerical"])
    best = min(rounds, key=lambda r: abs(r["frequency_numerical"] - 0.06))
    assert row["frequency_numerical"] == pytest.approx(best["frequency_numerical"])
    assert row["seconds_total"] >= row["numerical_seconds"] > 0
    assert [h["iteration"] for h in row["history"]] == list(range(len(row["history"])))
    assert (out / "frequency.png").exists() and "Output calibration" in (out / "report.md").read_text()
    # the plain protocol refuses an out-of-range number of rounds by name
    assert main(args[:-2] + ["calibration.rounds=-1"]) == 2
