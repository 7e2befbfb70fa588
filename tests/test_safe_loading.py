"""Loading a checkpoint or a shipped model never executes code from the file.

Checkpoints are read with ``torch.load(weights_only=True)``: a file whose unpickling would call
something (here ``os.system``, which would create a marker file) is refused with
:class:`~pdeaccel.train.io.UnsafeCheckpointError` before anything in it runs, and resume does not
pass over it as "damaged". What the trainer writes (weights, optimiser, RNG states, PRDP
schedule, ledger, a flow pool) loads under those rules. Shipped models are safetensors + JSON.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import pickle
import random
import warnings

import numpy as np
import pytest
import torch

from pdeaccel.experiments.runner import train_run
from pdeaccel.prdp import FixedSchedule, PRDPConfig, PRDPSchedule
from pdeaccel.train import io
from pdeaccel.train.trainer import Trainer, TrainSettings
from toy_tasks import OneParameterTask


# ------------------------------------------------------------------------------ helpers
class _Payload:
    """Unpickling this calls ``os.system(command)``: what a malicious checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _with_header(payload: bytes) -> bytes:
    """A file with a valid pdeaccel header and checksum: the checksum is no protection against intent."""
    return io.CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _malicious_payload(kind: str, marker) -> bytes:
    state = {"evil": _Payload(f"touch {marker}"), "epoch": 3, "task": {"w": torch.ones(2)}}
    buf = _io.BytesIO()
    if kind == "torch-zip":
        torch.save(state, buf)
    elif kind == "torch-legacy":
        torch.save(state, buf, _use_new_zipfile_serialization=False)
    elif kind == "raw-pickle-2":
        pickle.dump(state, buf, protocol=2)
    else:
        pickle.dump(state, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


def _trusted_load(path):
    """The old, unsafe way (only for files this test wrote itself): what the file really holds."""
    data = path.read_bytes()
    payload = data[len(io.CHECKPOINT_MAGIC):].partition(b"\n")[2]
    return torch.load(_io.BytesIO(payload), map_location="cpu", weights_only=False)


class _RandomStateTask(OneParameterTask):
    """A toy task whose state holds Python and numpy RNG states and numpy numbers."""

    def __init__(self):
        super().__init__(torch.tensor([3.0, -1.0], dtype=torch.float64))
        self.py_rng = random.Random(5)
        self.np_rng = np.random.default_rng(6)
        self.legacy_rng = np.random.RandomState(7)
        self.best = np.float64(np.inf)

    def state_dict(self):
        return {**super().state_dict(), "py_rng": self.py_rng.getstate(),
                "np_rng": self.np_rng.bit_generator.state, "legacy_rng": self.legacy_rng.get_state(),
                "best": self.best, "history": np.array([1.0, 2.0])}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.py_rng.setstate(s["py_rng"])
        self.np_rng.bit_generator.state = s["np_rng"]
        self.legacy_rng.set_state(s["legacy_rng"])
        self.best = float(s["best"])

    def train_batches(self, generator):
        noise = self.py_rng.random() + self.np_rng.random() + self.legacy_rng.rand()
        return [torch.randn(2, generator=generator, dtype=torch.float64) * 0.01 + noise * 1e-3]

    def loss(self, batch, budgets):
        return (self.w - 2.0 - batch).pow(2).sum()

    def validate(self, budgets):
        value = float((self.w.detach() - 2.0).abs().max())
        self.best = np.float64(min(float(self.best), value))
        return value


def _toy_trainer(run_dir, epochs, schedule=None):
    schedule = schedule or PRDPSchedule(PRDPConfig(k0=2, delta_k=2, k_max=20, tau_step=0.999, tau_stop=0.9,
                                                    ema_window=1, lookback=2))
    return Trainer(_RandomStateTask(), {"linear": schedule},
                   TrainSettings(epochs=epochs, optimizer="adam", lr=0.05, progress=False), run_dir, seed=11)


# ------------------------------------------------------------------------------ unsafe files
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "raw-pickle-2", "raw-pickle-highest"])
def test_checkpoint_that_would_execute_code_is_refused_before_it_runs(kind, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "epoch_00003.ckpt"
    path.write_bytes(_with_header(_malicious_payload(kind, marker)))
    with pytest.raises(io.UnsafeCheckpointError) as info:
        io.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refused" in message and "execute code" in message
    if kind != "raw-pickle-highest":  # that one already stops at an unsupported pickle instruction
        assert "system" in message  # names what the file asked to call
    assert "weights_only` set to `False`" not in message  # torch's advice to disable the check is not passed on
    assert not marker.exists()  # nothing in the file ran


def test_the_payload_really_executes_code_when_loaded_unsafely(tmp_path):
    """The control: the same file loaded the old way (weights_only=False) does run its command."""
    marker = tmp_path / "PWNED"
    torch.load(_io.BytesIO(_malicious_payload("torch-zip", marker)), weights_only=False)
    assert marker.exists()


def test_resume_stops_at_an_unsafe_checkpoint_instead_of_skipping_it(tmp_path):
    run = tmp_path / "run"
    _toy_trainer(run, epochs=2).fit()
    marker = tmp_path / "PWNED"
    evil = run / "checkpoints" / "epoch_00099.ckpt"  # the newest, so it is tried first
    evil.write_bytes(_with_header(_malicious_payload("torch-zip", marker)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipping damaged checkpoint" warning either
        with pytest.raises(io.UnsafeCheckpointError, match="epoch_00099.ckpt"):
            io.latest_valid_checkpoint(run / "checkpoints")
        with pytest.raises(io.UnsafeCheckpointError, match="execute code"):
            _toy_trainer(run, epochs=4).resume()
    assert evil.exists() and not evil.with_name(evil.name + ".damaged").exists()  # not quarantined as damage
    assert not marker.exists()


def test_unsafe_checkpoint_is_a_clear_cli_error_for_init_from(tmp_path, monkeypatch, capsys):
    """`net.init_from=` pointing at a run with a planted checkpoint fails with the refusal, nothing runs."""
    from pdeaccel.cli import main

    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))
    source = tmp_path / "shared"
    marker = tmp_path / "PWNED"
    (source / "checkpoints").mkdir(parents=True)
    (source / "checkpoints" / "epoch_00001.ckpt").write_bytes(_with_header(_malicious_payload("torch-zip", marker)))
    code = main(["train", "flow-2d", "--out", str(tmp_path / "new"), "--quiet", "physics.length=16",
                 "physics.height=8", "pool.size=2", "net.hidden=4", "net.levels=2", f"net.init_from={source}"])
    assert code != 0
    assert "execute code" in capsys.readouterr().err
    assert not marker.exists()


# ------------------------------------------------------------------------------ what the trainer writes
def test_training_checkpoint_with_rng_and_numpy_state_loads_safely_and_resumes_exactly(tmp_path):
    full = _toy_trainer(tmp_path / "full", epochs=5)
    full.fit()
    newest = sorted((tmp_path / "full" / "checkpoints").glob("*.ckpt"))[-1]
    state = io.load_checkpoint(newest)
    assert _same(state, _trusted_load(newest))  # nothing lost or changed by the weights-only loader
    assert isinstance(state["task"]["best"], float)  # numpy scalars were stored as Python numbers
    assert state["task"]["history"].dtype == torch.float64  # numpy arrays as tensors
    assert state["generator"].dtype == torch.uint8 and state["torch_rng"].dtype == torch.uint8
    assert state["schedules"]["linear"]["kind"] == "prdp" and state["ledger"]["epochs"]
    assert state["optimizer"]["state"]  # Adam moments

    part = _toy_trainer(tmp_path / "part", epochs=3)
    part.fit()
    resumed = _toy_trainer(tmp_path / "part", epochs=5)
    assert resumed.resume() and resumed.epoch == 3
    resumed.fit()
    assert torch.equal(resumed.task.w, full.task.w)
    assert [r["val_metric"] for r in resumed.rows] == [r["val_metric"] for r in full.rows]


def test_flow_pool_checkpoint_loads_safely(tmp_path, monkeypatch):
    """A real flow-2d run (moving obstacles, perturbations): pool specs, states and generator load
    under weights_only=True unchanged, and the run resumes from it."""
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))
    tiny = ["physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4", "net.levels=2",
            "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2",
            "pool.perturb=0.1", "pool.perturb_every=2", "pool.reset_every=2"]
    out = tmp_path / "flow"
    train_run("flow-2d", overrides=tiny + ["train.epochs=2"], out=out, progress=False)
    newest = sorted((out / "checkpoints").glob("*.ckpt"))[-1]
    state = io.load_checkpoint(newest)
    assert _same(state, _trusted_load(newest))
    pool = state["task"]["pool"]
    assert len(pool["specs"]) == 4 and pool["generator"].dtype == torch.uint8 and pool["perturbed"] > 0
    summary = train_run("flow-2d", out=out, resume=True, overrides=["train.epochs=3"], progress=False)
    assert summary["epochs"] == 3


def test_checkpoint_written_before_this_change_still_loads(tmp_path):
    """The header format is unchanged: a file written the old way (plain torch.save of the state) loads."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh())
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = {"epoch": 4, "task": {"net": net.state_dict()}, "optimizer": opt.state_dict(),
             "generator": torch.Generator().manual_seed(1).get_state(), "rows": [{"k": None, "val_metric": 0.5}],
             "reference_loss": float("inf"), "reference_k": 10, "pair": (1, "a")}
    buf = _io.BytesIO()
    torch.save(state, buf)  # exactly what save_checkpoint did before
    path = tmp_path / "epoch_00004.ckpt"
    path.write_bytes(_with_header(buf.getvalue()))
    loaded = io.load_checkpoint(path)
    assert _same(loaded, state)
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh())
    fresh.load_state_dict(loaded["task"]["net"])


def test_save_checkpoint_refuses_a_value_that_could_not_be_loaded_safely(tmp_path):
    path = tmp_path / "epoch_00001.ckpt"
    with pytest.raises(TypeError, match=r"task\.extra\[1\].*weights_only=True"):
        io.save_checkpoint(path, {"task": {"extra": [1, object()]}})
    assert not path.exists()
    with pytest.raises(TypeError, match="'state.a' is a numpy array of dtype object"):
        io.save_checkpoint(path, {"a": np.array([None], dtype=object)})
    with pytest.raises(TypeError, match="datetime"):
        io.save_checkpoint(path, {"when": np.datetime64("2024-01-01T00:00")})
    assert not path.exists()


# ------------------------------------------------------------------------------ shipped models
def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(4, 2, 1))


def _forbid_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_model must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_model_round_trips_through_safetensors_and_json(tmp_path, monkeypatch):
    net = _net()
    config = {"experiment": "flow-2d", "net": {"hidden": 4, "levels": 2}, "physics": {"mu_range": [0.1, 0.1]}}
    meta = {"command": "pdeaccel train flow-2d --out runs/x train.epochs=2", "optimizer_steps": 200,
            "epochs": 2, "wall_seconds": 12.5}
    out = io.save_model(tmp_path / "model", net.state_dict(), config, meta)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert sum(p.stat().st_size for p in out.iterdir()) < 3_000_000  # a few MB at most

    _forbid_pickle(monkeypatch)
    state, config2, meta2 = io.load_model(out)
    assert config2 == config
    assert {k: meta2[k] for k in meta} == meta
    assert meta2["torch_version"] == torch.__version__ and meta2["created"][:2] == "20"
    fresh = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(4, 2, 1))
    fresh.load_state_dict(state)
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(fresh(x), net(x))
    info = json.loads((out / "model.json").read_text())
    assert info["format"] == "pdeaccel-model-1" and len(info["weights_sha256"]) == 64


def test_model_keeps_dtypes_and_handles_shared_and_strided_tensors(tmp_path):
    w = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    state = {"a": w, "a_t": w.t(), "same": w, "steps": torch.tensor(7), "mask": torch.tensor([True, False])}
    io.save_model(tmp_path, state, {}, {})
    back, _, _ = io.load_model(tmp_path)
    assert back.keys() == state.keys()
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k])


def test_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load_model(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="'extra' is a str"):
        io.save_model(tmp_path / "bad", {"w": torch.ones(1), "extra": "x"}, {}, {})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(TypeError, match="not JSON serialisable"):
        io.save_model(tmp_path / "bad", {"w": torch.ones(1)}, {"f": object()}, {})
    assert not (tmp_path / "bad" / "model.safetensors").exists()  # nothing written when the JSON fails

    d = io.save_model(tmp_path / "m", _net().state_dict(), {"x": 1}, {"epochs": 1})
    weights, info = d / "model.safetensors", d / "model.json"
    good_weights, good_info = weights.read_bytes(), info.read_text()

    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        io.load_model(d)
    weights.write_bytes(good_weights[:-10])  # truncated
    with pytest.raises(ValueError, match="model.safetensors is damaged"):
        io.load_model(d)
    flipped = bytearray(good_weights)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch"):
        io.load_model(d)
    weights.write_bytes(good_weights)

    info.write_text(good_info[: len(good_info) // 2])
    with pytest.raises(ValueError, match="model.json is damaged: not valid JSON"):
        io.load_model(d)
    info.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a pdeaccel model description"):
        io.load_model(d)
    info.unlink()
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        io.load_model(d)


def test_a_pickle_posing_as_model_weights_is_never_executed(tmp_path):
    """Even with model.json's checksum matched to it, a pickle in model.safetensors is only parsed
    as safetensors (and rejected); it is never unpickled."""
    marker = tmp_path / "PWNED"
    d = io.save_model(tmp_path / "m", _net().state_dict(), {}, {})
    payload = _malicious_payload("torch-zip", marker)
    (d / "model.safetensors").write_bytes(payload)
    info = json.loads((d / "model.json").read_text())
    info["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    (d / "model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        io.load_model(d)
    assert not marker.exists()
