"""Files a run writes, written so a crash or a full disk never leaves a corrupted one behind.

Every file goes to a temporary name in the same directory, is flushed and fsync'ed, and is then
renamed over the target (atomic on POSIX), and the directory is fsync'ed so the rename itself
survives a power cut. Checkpoints carry a SHA-256 of their payload, checked on load, so a truncated
or bit-flipped file is detected and skipped instead of silently used. A process killed mid-write
leaves at most a hidden ``.NAME.*.tmp`` file, which :func:`remove_temporaries` clears on resume.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

CHECKPOINT_MAGIC = b"PDEACCEL-CKPT-1\n"
TEMP_SUFFIX = ".tmp"


class RunDirectoryError(OSError):
    """The run directory cannot be written (permissions, full disk); nothing was overwritten."""


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


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """torch-serialise ``state`` with a checksum header and write it atomically."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, CHECKPOINT_MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; raise ValueError if it is damaged."""
    data = Path(path).read_bytes()
    if not data.startswith(CHECKPOINT_MAGIC):
        raise ValueError(f"{path} is not a pdeaccel checkpoint (missing header)")
    rest = data[len(CHECKPOINT_MAGIC):]
    digest, _, payload = rest.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is corrupted or truncated (checksum mismatch)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def latest_valid_checkpoint(directory: str | os.PathLike,
                            quarantine: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint in ``directory`` that passes its checksum; damaged ones are skipped with a warning.

    With ``quarantine`` a damaged file is renamed to ``NAME.damaged`` (kept for inspection), so it
    is neither read again nor counted among the checkpoints :func:`prune_checkpoints` keeps.
    """
    for path in sorted(Path(directory).glob("epoch_*.ckpt"), reverse=True):
        try:
            return path, load_checkpoint(path)
        except (ValueError, EOFError, RuntimeError, OSError) as exc:
            warnings.warn(f"skipping damaged checkpoint {path}: {exc}", stacklevel=2)
            if quarantine:
                path.replace(path.with_name(path.name + ".damaged"))
    return None


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the floating-point tensors in a nested state that hold NaN or inf."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
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
