"""Files a run writes, written so a crash or a full disk never leaves a corrupted one behind.

Every file goes to a temporary name in the same directory, is flushed and fsync'ed, and is then
renamed over the target (atomic on POSIX). Checkpoints carry a SHA-256 of their payload, checked
on load, so a truncated or bit-flipped file is detected and skipped instead of silently used.
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


class RunDirectoryError(OSError):
    """The run directory cannot be written (permissions, full disk); nothing was overwritten."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunDirectoryError(f"writing {path} failed ({exc.strerror or exc}); the previous "
                                "version of the file, if any, is intact.") from exc


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


def latest_valid_checkpoint(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint in ``directory`` that passes its checksum; damaged ones are skipped with a warning."""
    for path in sorted(Path(directory).glob("epoch_*.ckpt"), reverse=True):
        try:
            return path, load_checkpoint(path)
        except (ValueError, EOFError, RuntimeError, OSError) as exc:
            warnings.warn(f"skipping damaged checkpoint {path}: {exc}", stacklevel=2)
    return None


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
