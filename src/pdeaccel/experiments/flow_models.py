"""Trained flow models as files: where a name or a path points (``--model flow-2d`` is a shipped model
under ``models/``), loading a run directory's newest valid checkpoint or an exported model, and
exporting one (safetensors + JSON with the exact training command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..train import io
from .flow import build_model


MODELS_DIR = Path(__file__).resolve().parents[3] / "models"  # the repository's shipped models


def resolve_model(model: str | Path) -> Path:
    """A model argument as a path: a run directory, an exported model directory, or the name of
    a shipped model (``models/NAME`` here or in the repository)."""
    path = Path(model)
    if path.exists():
        return path
    for base in (Path("models"), MODELS_DIR):
        if (base / str(model) / "model.json").exists():
            return base / str(model)
    shipped = sorted(p.name for p in MODELS_DIR.glob("*") if (p / "model.json").exists()) if MODELS_DIR.is_dir() else []
    raise FileNotFoundError(f"--model {model}: no such run directory or model; shipped models: "
                            f"{', '.join(shipped) or 'none'} (train one with `pdeaccel train flow-2d`).")


def load_flow_model(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any], int]:
    """The trained model of a flow run directory (newest intact checkpoint) or of an exported
    model (``model.safetensors`` + ``model.json``, e.g. a shipped ``models/flow-2d``), its config
    and the number of epochs it was trained. The model's class comes from the config's
    ``model.kind`` (:mod:`pdeaccel.flow_model`); runs from before that key are vanilla. An
    exported model is read from JSON and safetensors only: loading it never executes code."""
    import yaml

    run_dir = resolve_model(run_dir)
    if (run_dir / "model.json").exists():
        state, cfg, meta = io.load_model(run_dir)
        epochs = int(meta.get("epochs", 0))
    else:
        path = run_dir / "config.yaml"
        if not path.exists():
            raise FileNotFoundError(f"--model {run_dir}: no config.yaml or model.json; not a pdeaccel run directory "
                                    "or exported model (train one with `pdeaccel train flow-2d`).")
        cfg = yaml.safe_load(path.read_text())["config"]
        found = io.latest_valid_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"--model {run_dir}: no intact checkpoint in {run_dir / 'checkpoints'}.")
        state, epochs = found[1]["task"]["net"], int(found[1]["epoch"])
    if "pool" not in cfg or "physics" not in cfg:
        raise ValueError(f"--model {run_dir}: a {cfg.get('experiment')!r} run, not a flow one (flow-2d, flow-3d or "
                         "a NeuralStagger flow-*-s*t* run).")
    cfg.setdefault("model", {"kind": "vanilla", "stride": 1, "window": 1, "shared_weights": False})
    model = build_model(cfg)
    model.load_state_dict(state)
    model.eval()
    return model, cfg, epochs


def step_mirrored(model: torch.nn.Module) -> None:
    """Make a trained 2D vanilla model step mirror-equivariantly (``model.mirror``), whatever it
    was trained with."""
    if not hasattr(model, "mirror") or model.ndim != 2:
        raise ValueError("--mirror needs a 2D vanilla flow model (a NeuralStagger or 3D model has no mirror step).")
    model.mirror = True


def training_command(cfg: dict[str, Any]) -> str:
    """The ``pdeaccel train`` command that reproduces a run's config (its overrides of the defaults)."""
    from ..config import flatten
    from .registry import get_experiment

    exp = get_experiment(cfg["experiment"])
    defaults = flatten(exp.config(cfg.get("size", "cpu")))
    changed = [f"{k}={v}" for k, v in flatten(cfg).items()
               if k not in ("experiment", "size") and defaults.get(k) != v and k != "net.init_from"]
    size = [] if cfg.get("size", "cpu") == "cpu" else ["--size", cfg["size"]]
    return " ".join(["pdeaccel", "train", cfg["experiment"], *size, *changed])


def export_flow_model(run_dir: str | Path, dest: str | Path) -> Path:
    """Write the trained model of a flow run as ``dest/model.safetensors`` + ``model.json`` with
    its config, the command that trains it and the training budget it had."""
    import csv

    model, cfg, epochs = load_flow_model(run_dir)
    rows = list(csv.DictReader(open(Path(run_dir) / "metrics.csv"))) if (Path(run_dir) / "metrics.csv").exists() else []
    wall = sum(float(r.get("train_seconds") or 0) + float(r.get("validation_seconds") or 0) for r in rows[:epochs])
    t = cfg["train"]
    meta = {"command": training_command(cfg), "epochs": epochs, "optimizer_steps": epochs * t["steps_per_epoch"],
            "batch_size": t["batch_size"], "wall_seconds": round(wall, 1),
            "final_validation_metric": float(rows[epochs - 1]["val_metric"]) if rows else None,
            "parameters": sum(p.numel() for p in model.parameters()), "source": Path(run_dir).name}
    return io.save_model(dest, model.state_dict(), cfg, meta)
