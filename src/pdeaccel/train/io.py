"""Files a run writes, written so a crash or a full disk never leaves a corrupted one behind.

Every file goes to a temporary name in the same directory, is flushed and fsync'ed, and is then
renamed over the target (atomic on POSIX), and the directory is fsync'ed so the rename itself
survives a power cut. Checkpoints carry a SHA-256 of their payload, checked on load, so a truncated
or bit-flipped file is detected and skipped instead of silently used. A process killed mid-write
leaves at most a hidden ``.NAME.*.tmp`` file, which :func:`remove_temporaries` clears on resume.

Nothing read back ever executes code from the file. Checkpoints hold only tensors and plain Python
values (:func:`save_checkpoint` converts numpy values and refuses anything else before writing)
and are read with ``torch.load(weights_only=True)``; a file that would need code to be loaded (a
pickled callable, an arbitrary class) is refused with :class:`UnsafeCheckpointError` before any of
it runs. Shipped models (:func:`save_model`/:func:`load_model`) are a ``model.safetensors`` weight
file plus a ``model.json`` of config and provenance: no pickle at all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

CHECKPOINT_MAGIC = b"PDEACCEL-CKPT-1\n"
TEMP_SUFFIX = ".tmp"


class RunDirectoryError(OSError):
    """The run directory cannot be written (permissions, full disk); nothing was overwritten."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose loading would execute code from the file; it was refused unread.

    Unlike a damaged checkpoint it is never skipped or set aside silently:
    :func:`latest_valid_checkpoint` raises it.
    """


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``.

    Raises :class:`RunDirectoryError` (naming the file and the OS reason, e.g. "No space left on
    device") if the directory cannot be created or written; the old file is then untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise RunDirectoryError(f"cannot write to {path.parent}: {exc.strerror or exc}. "
                                "Choose another directory with --out.") from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; a run's files are normal files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunDirectoryError(f"writing {path} failed ({exc.strerror or exc}); the previous "
                                "version of the file, if any, is intact.") from exc


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` leftovers of writes that a crash interrupted; return them."""
    removed = []
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# what torch.load(weights_only=True) rebuilds without running code from the file
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def checkpointable(value: Any, where: str = "state") -> Any:
    """``value`` with numpy scalars/arrays turned into Python numbers/tensors, everything else checked.

    A checkpoint may hold tensors, ``None``/bool/int/float/complex/str/bytes, ``torch.Size``/
    ``dtype``/``device``, and dicts, lists, tuples and sets of these: exactly what
    ``torch.load(weights_only=True)`` reads. Tuple, list and dict subclasses (named tuples,
    ``defaultdict``) become the plain container (``OrderedDict`` is kept: it carries a module's
    state-dict metadata). Anything else raises ``TypeError`` naming its place in the state, so no
    checkpoint is ever written that could not be loaded safely. The input is not modified;
    containers are only copied where something changed.
    """
    kind = type(value)
    if kind in _PLAIN_LEAVES or kind in _PLAIN_TENSORS:
        return value
    if isinstance(value, np.generic):  # before float/int: np.float64 is a float subclass
        return checkpointable(value.item(), where)  # e.g. a datetime64's item() is no plain value
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(np.array(value, copy=True))
        except TypeError:
            raise TypeError(f"checkpoint entry {where!r} is a numpy array of dtype {value.dtype}, which a "
                            "checkpoint cannot hold (only numeric and bool arrays become tensors).") from None
    if isinstance(value, Mapping):
        items = {k: checkpointable(v, f"{where}.{k}") for k, v in value.items()}
        for k in items:
            if type(k) not in _PLAIN_LEAVES:
                raise TypeError(f"checkpoint entry {where!r} has a key of type {type(k).__name__} ({k!r}); "
                                "keys must be plain str/int/float/bool/None.")
        if kind in (dict, OrderedDict) and all(items[k] is value[k] for k in items):
            return value
        out = OrderedDict(items) if kind is OrderedDict else dict(items)
        if isinstance(out, OrderedDict) and hasattr(value, "_metadata"):
            out._metadata = value._metadata  # a module state dict's version information
        return out
    if isinstance(value, (list, tuple, set)):
        base = list if isinstance(value, list) else tuple if isinstance(value, tuple) else set
        items = [checkpointable(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if kind is base and all(a is b for a, b in zip(items, value)):
            return value
        return base(items)
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    raise TypeError(f"checkpoint entry {where!r} is a {kind.__module__}.{kind.__qualname__}, which a checkpoint "
                    "cannot hold: checkpoints are loaded with torch.load(weights_only=True) and hold only "
                    "tensors and plain Python values. Convert it in the state_dict() that produces it.")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """torch-serialise ``state`` with a checksum header and write it atomically.

    ``state`` goes through :func:`checkpointable` first: numpy values become Python numbers and
    tensors, and a value :func:`load_checkpoint` could not read back safely raises ``TypeError``
    before anything is written.
    """
    buf = io.BytesIO()
    torch.save(checkpointable(dict(state)), buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, CHECKPOINT_MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises ``ValueError`` if it is damaged (no header, checksum mismatch) and
    :class:`UnsafeCheckpointError` if its content is more than tensors and plain Python values:
    it is read with ``torch.load(weights_only=True)``, which refuses (before running anything) a
    file that would execute code when loaded, e.g. a pickled ``os.system`` call.
    """
    data = Path(path).read_bytes()
    if not data.startswith(CHECKPOINT_MAGIC):
        raise ValueError(f"{path} is not a pdeaccel checkpoint (missing header)")
    rest = data[len(CHECKPOINT_MAGIC):]
    digest, _, payload = rest.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is corrupted or truncated (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {path}: loading it would execute code from the file "
            f"({_refusal_reason(exc)}). pdeaccel checkpoints hold only tensors and plain Python values "
            "and are loaded with torch.load(weights_only=True); this file was not written by pdeaccel "
            "or was tampered with. Nothing in it was run; do not use it unless you trust its source."
        ) from None


def _refusal_reason(exc: Exception) -> str:
    """The one informative line of torch's weights-only refusal (what the file asked to import)."""
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"it asks to import and call {match.group(1)}"
    match = re.search(r"Unsupported operand \d+|Unsupported class [\w.]+", text)
    if match:
        return f"it uses a pickle instruction that weights-only loading does not allow: {match.group(0)}"
    return "it holds objects that weights-only loading does not allow"


def latest_valid_checkpoint(directory: str | os.PathLike,
                            quarantine: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint in ``directory`` that passes its checksum; damaged ones are skipped with a warning.

    With ``quarantine`` a damaged file is renamed to ``NAME.damaged`` (kept for inspection), so it
    is neither read again nor counted among the checkpoints :func:`prune_checkpoints` keeps. A
    file refused as unsafe (:class:`UnsafeCheckpointError`) is not damage: it is left in place
    and the error is raised, so an unexpected file is never passed over silently.
    """
    for path in sorted(Path(directory).glob("epoch_*.ckpt"), reverse=True):
        try:
            return path, load_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except (ValueError, EOFError, RuntimeError, OSError) as exc:
            warnings.warn(f"skipping damaged checkpoint {path}: {exc}", stacklevel=2)
            if quarantine:
                path.replace(path.with_name(path.name + ".damaged"))
    return None


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the floating-point tensors in a nested state that hold NaN or inf."""
    if isinstance(state, torch.Tensor):
        # a finite sum proves every entry finite in one pass without a mask as large as the tensor
        if state.is_floating_point() and not (math.isfinite(state.detach().sum().item())
                                              or bool(torch.isfinite(state).all())):
            return [prefix or "<tensor>"]
        return []
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    found: list[str] = []
    for key, value in items:
        found += non_finite_entries(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> None:
    for path in sorted(Path(directory).glob("epoch_*.ckpt"), reverse=True)[keep:]:
        path.unlink(missing_ok=True)


def write_csv(path: str | os.PathLike, rows: list[Mapping[str, Any]]) -> None:
    """Rewrite the whole CSV atomically (rows are few; a partial append can never appear)."""
    if not rows:
        return
    fields: list[str] = []
    for row in rows:
        for k in row:
            if k not in fields:
                fields.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def prepare_fresh_run_dir(run_dir: Path) -> None:
    """Create an output directory for a one-shot command (a simulation), refusing one that
    already holds files: nothing written before is ever overwritten."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        if not run_dir.is_dir():
            raise FileExistsError(f"--out {run_dir} exists and is not a directory; choose another --out.")
        if any(run_dir.iterdir()):
            raise FileExistsError(f"run directory {run_dir} already holds files; refusing to overwrite them. "
                                  "Choose another --out (or leave it out for a new timestamped directory).")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------
# shipped models: safetensors weights + JSON, no pickle
# --------------------------------------------------------------------------------------------

MODEL_WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
MODEL_FORMAT = "pdeaccel-model-1"


def save_model(directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
               meta: Mapping[str, Any]) -> Path:
    """Write a trained model to ``directory`` as ``model.safetensors`` + ``model.json``; return the directory.

    ``state_dict`` (a module's ``state_dict()``: names to tensors) goes to the safetensors file,
    ``config`` (the run's configuration, enough to rebuild the network) and ``meta`` (provenance:
    the exact ``command``, ``optimizer_steps``, ``epochs``, ``wall_seconds``, ...) to the JSON
    file, which also records the weights' SHA-256, the creation date (UTC) and the torch version
    unless ``meta`` gives them. Both files are written atomically, the weights first, so a crash
    leaves either the old model or a JSON whose checksum no longer matches (which
    :func:`load_model` reports). Neither file holds pickled data: loading it never runs code.
    """
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_model: state_dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                            "only tensors go into model.safetensors (put other settings into config).")
        # own, contiguous CPU storage: safetensors refuses views and tensors that share memory
        tensors[str(name)] = value.detach().to("cpu").contiguous().clone()
    from safetensors.torch import save as safetensors_save

    weights = safetensors_save(tensors, metadata={"format": MODEL_FORMAT})
    info = {
        "format": MODEL_FORMAT,
        "weights": MODEL_WEIGHTS,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "config": dict(config),
        "meta": {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "torch_version": torch.__version__, **dict(meta)},
    }
    text = json.dumps(info, indent=2, default=_json_default) + "\n"  # fails here, before writing, if not JSON-able
    atomic_write_bytes(directory / MODEL_WEIGHTS, weights)
    atomic_write_text(directory / MODEL_INFO, text)
    return directory


def load_model(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a model written by :func:`save_model`: ``(state_dict, config, meta)`` (tensors on the CPU).

    Only JSON and safetensors are parsed (never pickle), so a shared model cannot execute code.
    A missing directory or file raises ``FileNotFoundError``; a damaged one (unreadable JSON, a
    weight file whose checksum does not match ``model.json``) raises ``ValueError``; both name
    the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist (or is not a directory); a "
                                f"shipped model is a directory holding {MODEL_WEIGHTS} and {MODEL_INFO}.")
    info_path, weights_path = directory / MODEL_INFO, directory / MODEL_WEIGHTS
    for path in (info_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; a shipped model is a directory holding "
                                    f"{MODEL_WEIGHTS} and {MODEL_INFO} (written by save_model).")
    try:
        info = json.loads(info_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{info_path} is damaged: not valid JSON ({exc}).") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"{info_path} is not a pdeaccel model description (format {got!r}, expected {MODEL_FORMAT!r}).")
    for key, kind in (("weights_sha256", str), ("config", dict), ("meta", dict)):
        if not isinstance(info.get(key), kind):
            raise ValueError(f"{info_path} is damaged: '{key}' is missing or not a {kind.__name__}.")
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != info["weights_sha256"]:
        raise ValueError(f"{weights_path} is damaged or does not belong to {info_path} (checksum mismatch); "
                         "copy the model directory again.")
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    try:
        state = safetensors_load(weights)
    except SafetensorError as exc:
        raise ValueError(f"{weights_path} is not a readable safetensors file ({exc}).") from None
    return dict(state), info["config"], info["meta"]
