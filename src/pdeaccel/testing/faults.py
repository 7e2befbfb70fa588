"""Fault injection: kill a training process at random moments, resume it, compare with a clean run.

What "resume is exact" means here, and what this module checks (:func:`comparable_run`): after any
number of SIGKILLs and ``--resume`` restarts, the finished run directory equals an uninterrupted
run's in everything but wall-clock time —

* the final checkpoint bit for bit: weights, optimiser state, PRDP (and Picard) schedule state and
  events, learning-rate schedule, minibatch generator and torch RNG, divergence-guard events, the
  iteration ledger's counts (forward/backward iterations, solves, steps, K per epoch);
* ``metrics.csv`` cell for cell, ``events.json``, and ``report.json``;

except the fields that time something (``train_seconds``, ``validation_seconds``, ``seconds``,
``wall_seconds_total``) and the run directory's own path. Work an interrupted process did after
its last checkpoint is redone and counted once, as in the uninterrupted run.

``python -m pdeaccel.testing.faults --slow-writes S -- train NAME ...`` runs the CLI with every
fsync delayed by S seconds, which widens the window between writing a temporary file and renaming
it, so that a kill lands inside a checkpoint write often enough to test it.

Multi-process jobs (``run_with_kills(..., nproc=N)``: ``pdeaccel train ... --nproc N``): each kill
hits the launcher or one rank (``rank 0`` writes the checkpoints); the next command starts only
once every process of the killed job is gone. The ranks are started by the launcher, not by this
module, so the slow fsync reaches them through a ``sitecustomize`` on their ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import runpy
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..train import io

#: fields that measure time (or name the directory) and legitimately differ between runs
TIMING_KEYS = frozenset({"train_seconds", "validation_seconds", "seconds", "wall_seconds_total", "run_dir"})


@dataclass
class Kill:
    """One SIGKILL of a training process."""

    mode: str  # "random": after a random delay; "mid-write": while a checkpoint's temporary file existed
    after_seconds: float  # time from the process start to the kill
    resumed: bool  # the killed process was itself a --resume
    finished_before_kill: bool  # the process exited before the kill was sent (nothing to kill)
    checkpoints_before: int  # epoch of the newest checkpoint file when the process was started (-1: none)
    interrupted_writes: list[str]  # files whose atomic write the kill interrupted (leftover .tmp files)
    target: str = "process"  # multi-process jobs: "launcher", "rank 0", "rank 1", ...
    job_gone_seconds: float | None = None  # multi-process jobs: from the kill until no process of the job was left
    leftovers_killed: int = 0  # processes of the job still alive 30 s after the kill (then SIGKILLed: a failure)


def comparable_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything a finished run directory holds that must not depend on interruptions (see module doc)."""
    run_dir = Path(run_dir)
    found = io.latest_valid_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no intact checkpoint")
    with (run_dir / "metrics.csv").open() as fh:
        metrics = list(csv.DictReader(fh))
    return _strip_timing({
        "checkpoint_name": found[0].name,
        "checkpoint": found[1],
        "metrics": metrics,
        "events": json.loads((run_dir / "events.json").read_text()),
        "report": json.loads((run_dir / "report.json").read_text()),
    })


def _strip_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_strip_timing(v) for v in obj]
    return obj


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two nested states differ: tensors must match in dtype, shape and every bit."""
    where = path or "<root>"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: tensor vs {type(b if isinstance(a, torch.Tensor) else a).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return [f"{where}: tensors differ"]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: key {k!r} only on one side" for k in sorted(set(a) ^ set(b), key=str)]
        for k in a:
            if k in b:
                out += differences(a[k], b[k], f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _newest_checkpoint_epoch(run_dir: Path) -> int:
    names = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    return int(names[-1].stem.split("_")[1]) if names else -1


def _temporaries(run_dir: Path) -> list[str]:
    """Targets of the atomic writes in progress (or interrupted): ``.NAME.XXXX.tmp`` -> ``NAME``."""
    dirs = [d for d in (run_dir, run_dir / "checkpoints") if d.is_dir()]
    return sorted(p.name[1:].rsplit(".", 2)[0] for d in dirs for p in d.iterdir() if io.is_temporary(p))


def _checkpoint_write_in_progress(run_dir: Path) -> bool:
    return any(name.endswith(".ckpt") for name in _temporaries(run_dir))


def _command(train_args: Sequence[str], out: Path, slow_writes: float,
             launch: Sequence[str] = ()) -> tuple[list[str], bool]:
    """The next command for a run directory: a fresh start until config.yaml exists, then --resume
    (``launch``: options every command gets, e.g. ``--nproc 2``)."""
    resume = (out / "config.yaml").exists()
    name = train_args[0]
    rest = ["--resume", str(out)] if resume else ["--out", str(out), *train_args[1:]]
    cmd = [sys.executable, "-m", "pdeaccel.testing.faults", "--slow-writes", str(slow_writes), "--",
           "train", name, "--quiet", *rest, *launch]
    return cmd, resume


SLOW_WRITES_ENV = "PDEACCEL_FAULTS_SLOW_WRITES"
_SITECUSTOMIZE = f"""# written by pdeaccel.testing.faults: slow fsync in every process of a job it starts
import os as _os
if _os.environ.get({SLOW_WRITES_ENV!r}):
    import time as _time
    _real, _delay = _os.fsync, float(_os.environ[{SLOW_WRITES_ENV!r}])
    def _fsync(fd, _real=_real, _delay=_delay):
        _time.sleep(_delay)
        _real(fd)
    _os.fsync = _fsync
"""


def _environment(slow_writes: float = 0.0, hook_dir: Path | None = None) -> dict[str, str]:
    # one thread, like the reference run: the result must not depend on how many threads reduce a sum
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if hook_dir is not None and slow_writes > 0:
        hook_dir.mkdir(parents=True, exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env[SLOW_WRITES_ENV] = str(slow_writes)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook_dir), env.get("PYTHONPATH", "")) if p)
    return env


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            path = task / "children"
            if path.exists():
                children += [int(c) for c in path.read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The process of ``rank`` in the job ``launcher`` started (torchrun sets RANK in its environment)."""
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
            return pid
    return None


def run_with_kills(train_args: Sequence[str], out: str | Path, moments: Sequence[tuple],
                   slow_writes: float = 0.0, final_timeout: float = 600.0, nproc: int = 1) -> list[Kill]:
    """Train ``pdeaccel train *train_args`` into ``out``, SIGKILLing it once per entry of ``moments``.

    Each entry is ``("random", delay)`` — kill ``delay`` seconds after the process starts — or
    ``("mid-write", timeout)`` — kill as soon as a checkpoint's temporary file appears (a checkpoint
    write in progress), or after ``timeout`` seconds. Every restart resumes the directory (or starts
    it afresh while it has no config.yaml). After the last kill the run is resumed to completion;
    a non-zero exit status of that last run raises ``RuntimeError`` with its stderr.

    With ``nproc > 1`` every command runs ``--nproc nproc`` and an entry may name its target as a
    third element: ``"launcher"`` or ``"rank R"`` (default the launcher; a rank that has not
    started yet at the kill moment is waited for until ``limit`` + 30 s). Before the next command
    starts, every process of the killed job must be gone: the ranks of a killed launcher stop on
    their own (:mod:`pdeaccel.train.distributed`), the agent stops the others of a killed rank.
    """
    out = Path(out)
    kills = []
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    env = _environment(slow_writes, out.parent / f".{out.name}-hooks" if nproc > 1 else None)
    for moment in moments:
        mode, limit = moment[0], moment[1]
        target = (moment[2] if len(moment) > 2 else "launcher") if nproc > 1 else "process"
        before = _newest_checkpoint_epoch(out)
        cmd, resumed = _command(train_args, out, slow_writes, launch)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = start + limit
        while time.perf_counter() < deadline and proc.poll() is None:
            if mode == "mid-write" and _checkpoint_write_in_progress(out):
                break
            time.sleep(0.002 if mode == "mid-write" else 0.01)
        victim = proc.pid
        if target.startswith("rank"):
            rank = int(target.split()[1])
            victim = _rank_pid(proc.pid, rank)
            while victim is None and proc.poll() is None and time.perf_counter() < deadline + 30:
                time.sleep(0.01)
                victim = _rank_pid(proc.pid, rank)
        job = [proc.pid] + _descendants(proc.pid)
        finished = proc.poll() is not None or victim is None
        if not finished:
            os.kill(victim, signal.SIGKILL)
        killed_at = time.perf_counter()
        proc.wait()
        while any(_alive(p) for p in job) and time.perf_counter() < killed_at + 30:
            time.sleep(0.01)
        leftovers = [p for p in job if _alive(p)]
        for p in leftovers:
            os.kill(p, signal.SIGKILL)
        gone = time.perf_counter() - killed_at if nproc > 1 else None
        kills.append(Kill(mode, killed_at - start, resumed, finished, before, _temporaries(out), target, gone,
                          len(leftovers)))
    cmd, _ = _command(train_args, out, slow_writes, launch)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=final_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the final resume failed ({done.returncode}): {done.stderr[-2000:]}")
    return kills


def random_moments(count: int, max_delay: float, rng: random.Random, mid_write_share: float = 0.3,
                   min_delay: float = 0.0, targets: Sequence[str] = ()) -> list[tuple]:
    """``count`` kill moments: a share triggered by a write in progress, the rest at uniform random
    delays; with ``targets`` (a multi-process job) each names whom it kills, drawn uniformly
    (a mid-write kill hits ``rank 0``, the writer, when it is a target)."""
    out: list[tuple] = []
    for _ in range(count):
        moment = (("mid-write", max_delay) if rng.random() < mid_write_share
                  else ("random", rng.uniform(min_delay, max_delay)))
        if targets:
            writer = moment[0] == "mid-write" and "rank 0" in targets
            moment += ("rank 0" if writer else rng.choice(list(targets)),)
        out.append(moment)
    return out


def kills_as_dicts(kills: Sequence[Kill]) -> list[dict[str, Any]]:
    return [asdict(k) for k in kills]


def _slow_fsync(seconds: float) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        time.sleep(seconds)
        real(fd)

    os.fsync = fsync


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "--slow-writes" or "--" not in argv:
        print("usage: python -m pdeaccel.testing.faults --slow-writes SECONDS -- CLI-ARGS...", file=sys.stderr)
        return 2
    seconds = float(argv[1])
    if seconds > 0:
        _slow_fsync(seconds)
    # run the real command line as a program (nothing imports the CLI module)
    sys.argv = ["pdeaccel", *argv[argv.index("--") + 1:]]
    try:
        runpy.run_module("pdeaccel.cli", run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
