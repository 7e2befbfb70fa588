"""The one training loop every task shares.

A *task* (emulator learning, hybrid correction learning, an inverse problem, the
physics-constrained pool) says what its parameters are, which named budgets it uses
(:mod:`pdeaccel.train.budgets`), how a minibatch loss is computed under given budgets, and how it
is validated. The trainer owns everything else: epochs, one schedule per named budget (PRDP or a
baseline), the iteration ledger, the optimiser and learning-rate schedule, the divergence guard,
atomic checkpoints, resume, the metrics CSV, and the run directory.

With several processes (torchrun; :mod:`pdeaccel.train.distributed`) the same loop trains data
parallel: each rank trains on its share of every minibatch, gradients and the loss are summed
over the ranks before the guard and the optimiser see them, rank 0's validation metric is
broadcast before the schedule decides, the ledger counts the work of all ranks, and rank 0 alone
writes checkpoints, logs and progress.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import torch
from tqdm.auto import tqdm

from ..linalg import NonFiniteError
from ..prdp import IterationLedger, Schedule
from .allocator import keep_freed_memory
from .budgets import LINEAR, PICARD, Budgets
from .checkpointing import CheckpointedTraining, DivergenceError, NothingResumedError  # noqa: F401 (public here)
from .distributed import DistContext, place_sub_solvers, sample_count, shard_batch


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite. A finite sum proves it (any NaN or inf makes the sum
    NaN or inf) in one pass with no temporary; only a non-finite sum (NaN/inf inside, or finite
    values overflowing) needs the element-wise test, so the answer is always that of
    ``torch.isfinite(t).all()``, which allocates a mask as large as ``t`` (36 MB for a gradient of
    the 23.4M-parameter heat-2d MLP, every step)."""
    if t.is_floating_point() and math.isfinite(t.detach().sum().item()):
        return True
    return bool(torch.isfinite(t).all())


class Task(Protocol):
    """What the trainer needs from a learning problem.

    ``budgets`` names the budgets its loss and validation read (``()`` for a task without a solver
    in the loop); the trainer passes their current values as a :class:`~pdeaccel.train.budgets.Budgets`.
    """

    budgets: tuple[str, ...]

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def train_batches(self, generator: torch.Generator) -> Iterable[Any]: ...

    def loss(self, batch: Any, budgets: Budgets) -> torch.Tensor: ...

    def validate(self, budgets: Budgets) -> float: ...


@dataclass
class TrainSettings:
    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_decay: float = 1.0  # exponential decay factor per epoch
    checkpoint_keep: int = 3
    guard_factor: float = 1e3  # a loss this many times the best epoch loss at the same K counts as divergence
    guard_retries: int = 3
    progress: bool = True
    target_metric: float | None = None  # stop once the validation metric reaches it (equal-accuracy runs)


def _denormals_flushed() -> bool:
    """Whether subnormal floats are flushed to zero now (PyTorch has a setter but no getter): a
    float64 subnormal survives a multiplication by 1 only when they are not."""
    return bool((torch.tensor([1e-310], dtype=torch.float64) * 1.0)[0] == 0)


@contextlib.contextmanager
def flushing_denormals():
    """Subnormal floats flushed to zero inside the block (training and validation: gradients of tiny
    residuals reach the subnormal range, where x86 arithmetic is ~100× slower), the previous
    setting restored after it."""
    flushed = _denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushed)


class Trainer(CheckpointedTraining):
    """Train ``task`` for ``settings.epochs`` epochs, changing its budgets by their schedules.

    Args:
        task: the learning problem; ``task.budgets`` names the budgets it uses.
        schedules: one schedule per budget the task declares, by name (``{"linear":
            PRDPSchedule(...), "picard": ...}``; ``{}`` for a task without budgets). Every schedule
            sees the same metric after each epoch; the first one's budget is the one the
            divergence guard raises (K, when the task declares it).
        settings: epochs, optimiser, guard, ...
        validation_budgets: the budgets validation runs under (default: every declared budget
            ``None``, i.e. converged); its solves are counted apart from the training cost.
        run_dir: where checkpoints, ``metrics.csv`` and ``events.json`` go (``None``: nothing written).
        seed: seeds the minibatch order; the generator state is checkpointed.
        dist: this process's rank in a data-parallel job (default: a single process). Every rank
            builds the same task from the same seed; rank 0's parameters are broadcast at the start.
            Its ``device`` other than the CPU moves the task there (``task.to(device)``); its
            ``sub_solver_ranks`` > 1 splits the task's NeuralStagger model (``task.net``) over ranks.
        shard_batches: with several ranks, rank ``r`` trains on the ``r``-th chunk of every
            minibatch the task yields (data tasks); ``False`` when the task already yields this
            rank's own batch (a per-rank pool).
    """

    def __init__(self, task: Task, schedules: Mapping[str, Schedule], settings: TrainSettings,
                 run_dir: str | Path | None = None, seed: int = 0, *,
                 validation_budgets: Mapping[str, int | None] | None = None, dist: DistContext | None = None,
                 shard_batches: bool = True) -> None:
        declared = tuple(getattr(task, "budgets", ()))
        if set(schedules) != set(declared):
            raise ValueError(f"the task declares the budgets {list(declared)} (task.budgets) but schedules were given "
                             f"for {list(schedules)}; give exactly one schedule per declared budget.")
        self.dist = dist if dist is not None else DistContext()
        if self.dist.device != "cpu":  # before the optimiser sees the parameters
            move = getattr(task, "to", None)
            if move is None:
                from ..config import ConfigError

                raise ConfigError(f"--device {self.dist.device}: this experiment's task ({type(task).__name__}) "
                                  "trains on the CPU only; the flow experiments (flow-2d, flow-3d and the "
                                  "NeuralStagger ones) train on a GPU. Use --device cpu.")
            move(torch.device(self.dist.device))
        self.task = task
        self.schedules = {name: schedules[name] for name in declared}
        self.validation_budgets = {name: None for name in declared}
        self.validation_budgets.update(validation_budgets or {})
        # the budget the divergence guard raises and the loss comparison is kept per
        self.guarded = next(iter(self.schedules.values()), None)
        self.shard_batches = shard_batches
        if not self.dist.is_main:  # progress and logs from rank 0 only
            settings = dataclasses.replace(settings, progress=False)
        self.settings = settings
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ledger = IterationLedger()
        params = list(task.parameters())
        if settings.optimizer == "adam":
            # foreach: element for element the arithmetic of torch's default per-tensor loop on a CPU
            # (bit-identical, tests/test_train.py) in fewer passes over the state (benchmarks/epoch_cost.py)
            self.optimizer = torch.optim.Adam(params, lr=settings.lr, foreach=True)
        elif settings.optimizer == "adam-fused":
            # one fused kernel per tensor: fastest, but rounds differently from "adam" (not bit-identical)
            self.optimizer = torch.optim.Adam(params, lr=settings.lr, fused=True)
        elif settings.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=settings.lr)
        else:
            raise ValueError(f"train.optimizer must be 'adam', 'adam-fused' or 'sgd', got {settings.optimizer!r}")
        self.lr_schedule = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=settings.lr_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.rows: list[dict[str, Any]] = []
        self.guard_events: list[dict[str, Any]] = []
        self.reference_loss = math.inf
        self.reference_k: int | None = None
        # what the guard restores: the state after the best epoch at the current K (None: the
        # coming epoch's start). Not checkpointed; after a resume it is the resumed state.
        self._good_state: dict[str, Any] | None = None
        if self.dist.distributed:
            with torch.no_grad():
                for i, p in enumerate(params):
                    self.dist.broadcast_tensor(p.data, f"the initial parameter {i}")
        if self.dist.sub_solver_ranks > 1:  # NeuralStagger's sub-solvers spread over the replica's ranks
            place_sub_solvers(getattr(task, "net", None), self.dist)

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, Any]]:
        """Train until ``settings.epochs`` (or the target metric). Two process-wide settings are made
        here, not at import or construction: subnormal floats are flushed to zero while ``fit`` runs
        (gradients of tiny residuals reach the subnormal range, where x86 arithmetic is ~100× slower)
        and restored to what they were when it returns; and glibc is told to keep freed memory for
        reuse (:func:`~pdeaccel.train.allocator.keep_freed_memory`: once per process, off with
        ``PDEACCEL_ALLOCATOR=system``), so one step's large tensors are reused by the next."""
        keep_freed_memory()
        with flushing_denormals():
            return self._fit()

    def _fit(self) -> list[dict[str, Any]]:
        total = self.settings.epochs
        bar = tqdm(total=total, initial=self.epoch, desc="epochs", disable=not self.settings.progress,
                   dynamic_ncols=True, leave=False)
        while self.epoch < total and not self.reached_target():
            self._run_epoch()
            last = self.rows[-1]
            bar.update(1)
            bar.set_postfix(K=last["k"], loss=f"{last['train_loss']:.3g}", val=f"{last['val_metric']:.3g}")
        bar.close()
        return self.rows

    def reached_target(self) -> bool:
        target = self.settings.target_metric
        return bool(target is not None and self.rows and self.rows[-1]["val_metric"] <= target)

    def _run_epoch(self) -> None:
        if self._good_state is None or self._guarded_budget() != self.reference_k:
            self._good_state = self._snapshot()  # only when kept: a copy of every weight and optimiser state
        # iterations of an attempt the guard rolls back were still run: they stay in this epoch's count
        self.ledger.start_epoch(self.epoch)
        for attempt in range(self.settings.guard_retries + 1):
            values = {name: s.budget for name, s in self.schedules.items()}
            budget = self._guarded_budget()
            # every rank always trains with the same budgets (they follow identical reduced numbers)
            self.dist.check_same((self.epoch, attempt, tuple(values.items())),
                                 f"the budget check of epoch {self.epoch} (epoch, attempt, budgets)")
            self.ledger.record_budget(values.get(LINEAR))
            if budget != self.reference_k:
                self.reference_loss = math.inf
            losses, failure = self._train_attempt(Budgets(values, monitor=self.ledger))
            metric = math.nan
            if failure is None:
                with self.ledger.phase("validation"):
                    metric = float(self.task.validate(Budgets(self.validation_budgets, monitor=self.ledger)))
                # task-specific validation diagnostics (e.g. the flow residuals) become extra columns
                extra = dict(getattr(self.task, "last_validation", None) or {})
                # every rank validates the same weights; rank 0's numbers decide on every rank
                metric, extra = self.dist.broadcast_object((metric, extra), "the validation metric")
                if not math.isfinite(metric):
                    failure = {"where": "validation metric", "step": None, "value": metric}
            if failure is None:
                break
            # a gradual divergence has already spoiled the epoch's start: go back to the best state
            self._restore(self._good_state)
            reason = f"divergence guard: {failure['where']} {failure['value']:.3g}"
            event = None if self.guarded is None else self.guarded.raise_budget(self.epoch, reason)
            self.guard_events.append({"epoch": self.epoch, "attempt": attempt, **failure, "old_k": budget,
                                      "new_k": self._guarded_budget(), "raised": event is not None})
            step = "" if failure["step"] is None else f" step {failure['step']}"
            if self.dist.is_main:
                tqdm.write(f"[guard] epoch {self.epoch}{step}: {failure['where']} is {failure['value']:.3g}; "
                           f"restored the last good state, K {budget} -> {self._guarded_budget()}")
        else:
            raise DivergenceError(f"training diverged {self.settings.guard_retries + 1} times in epoch "
                                  f"{self.epoch} even after raising K (last: {failure['where']} is "
                                  f"{failure['value']:.3g}); lower the learning rate or raise K0.")
        train_loss = sum(losses) / max(len(losses), 1)
        # losses at different K are not comparable (an under-converged solve can shrink the loss by
        # orders of magnitude), so the explosion test only compares epochs run at the same budget.
        # Against the best of those, not the last: a truncated solve whose implicit gradient has the
        # wrong sign on some modes makes the loss grow only a few-fold per epoch (heat-1d at K = 1),
        # which no comparison with the previous epoch would flag.
        if losses and train_loss < self.reference_loss:
            self.reference_loss = train_loss
            self._good_state = None  # the state after this epoch, taken when the next one starts
        self.reference_k = budget
        record = self.ledger.end_epoch()
        if self.dist.distributed:
            self._sum_ledger_counts(record)
        lr = self.optimizer.param_groups[0]["lr"]
        self.lr_schedule.step()
        events = {name: s.update(self.epoch, metric if s.metric == "validation" else train_loss)
                  for name, s in self.schedules.items()}
        # K and the Picard count keep their columns; any other budget gets one by its name
        row = {"epoch": self.epoch, "k": values.get(LINEAR), "picard": values.get(PICARD),
               **{name: v for name, v in values.items() if name not in (LINEAR, PICARD)},
               "train_loss": train_loss, "val_metric": metric, "lr": lr,
               "forward_iters": record["forward_iters"], "backward_iters": record["backward_iters"],
               "train_seconds": record["train_seconds"], "validation_seconds": record["validation_seconds"],
               "refined": self.guarded is not None and next(iter(events.values())) is not None}
        row.update(extra)
        self.rows.append(row)
        self.epoch += 1
        self._checkpoint()

    def _train_attempt(self, budgets: Budgets) -> tuple[list[float], dict[str, Any] | None]:
        """One pass over the minibatches; stops at the first non-finite or exploding value.

        Returns the step losses and ``None``, or the losses so far and where the fault appeared
        (``{"where", "step", "value"}``), for the divergence guard to roll back.
        """
        if self.dist.distributed:
            return self._train_attempt_distributed(budgets)
        losses: list[float] = []
        with self.ledger.phase("train"):
            for step, batch in enumerate(self.task.train_batches(self.generator)):
                if isinstance(batch, torch.Tensor) and not all_finite(batch):
                    # bad data, not divergence: a larger K cannot repair it
                    raise FloatingPointError(f"epoch {self.epoch}, step {step}: the training batch contains "
                                             "NaN/inf; the dataset is damaged (delete its cache file to regenerate).")
                self.optimizer.zero_grad(set_to_none=True)
                try:
                    loss = self.task.loss(batch, budgets)
                except NonFiniteError as exc:  # a solve inside the loss was handed a diverged state
                    return losses, {"where": f"solver input ({exc})", "step": step, "value": math.nan}
                value = float(loss.detach())
                if (trip := self._loss_trip(value, step)) is not None:
                    return losses, trip
                loss.backward()
                for i, p in enumerate(self.task.parameters()):
                    if p.grad is not None and not all_finite(p.grad):
                        return losses, {"where": f"gradient of parameter {i} {list(p.shape)}", "step": step,
                                        "value": math.nan}
                self.optimizer.step()
                self.ledger.count_step()
                losses.append(value)
        return losses, self._parameters_trip()

    def _loss_trip(self, value: float, step: int) -> dict[str, Any] | None:
        """The guard's verdict on one step's loss: non-finite, or exploding against the best epoch's
        loss at this budget (a ratio means "exploding" only for positive losses; a log-loss is
        negative). None: the step may go on."""
        if not math.isfinite(value):
            return {"where": "loss", "step": step, "value": value}
        if self.reference_loss > 0 and value > self.settings.guard_factor * self.reference_loss:
            return {"where": f"loss ({self.settings.guard_factor:g}x the best epoch's at this K)", "step": step,
                    "value": value}
        return None

    def _parameters_trip(self) -> dict[str, Any] | None:
        """The guard's verdict on the parameters after an epoch's optimiser steps."""
        for i, p in enumerate(self.task.parameters()):
            if not all_finite(p):
                return {"where": f"parameter {i} {list(p.shape)} after the optimiser step", "step": None,
                        "value": math.nan}
        return None

    def _train_attempt_distributed(self, budgets: Budgets) -> tuple[list[float], dict[str, Any] | None]:
        """:meth:`_train_attempt` of one rank of a data-parallel job.

        Every step, each rank computes the loss and gradient of its share of the minibatch; one
        all-reduce per dtype sums ``n_r·∇L_r`` (``n_r`` its samples), and one more sums
        ``n_r·L_r``, ``n_r``, a flag for a non-finite solver input and, per parameter, whether it
        got a gradient. The optimiser steps with ``Σ n_r∇L_r / Σ n_r``: the gradient of the global
        minibatch's mean loss. The guard tests the reduced loss and gradient, so every rank stops
        (and rolls back) at the same step.

        With NeuralStagger sub-solvers split over ``G`` ranks per replica, the ``G`` members of a
        replica hold the same batch and loss but each only its own sub-solvers' part of the
        gradient: the sum over all ranks is ``Σ_d n_d·∇L_d`` (each replica's whole gradient) while
        ``Σ n_r`` counts every replica's samples ``G`` times, so the gradient is divided by
        ``Σ n_r / G`` (the loss, the same on every member, by ``Σ n_r``).
        """
        losses: list[float] = []
        params = list(self.task.parameters())
        with self.ledger.phase("train"):
            for step, batch in enumerate(self.task.train_batches(self.generator)):
                local = shard_batch(batch, self.dist) if self.shard_batches else batch
                if isinstance(local, torch.Tensor) and not all_finite(local):
                    raise FloatingPointError(f"epoch {self.epoch}, step {step}: the training batch of rank "
                                             f"{self.dist.rank} contains NaN/inf; the dataset is damaged (delete its "
                                             "cache file to regenerate).")
                self.optimizer.zero_grad(set_to_none=True)
                n = sample_count(local)
                value, solver_error = 0.0, ""
                if n > 0:
                    try:
                        loss = self.task.loss(local, budgets)
                    except NonFiniteError as exc:
                        solver_error = str(exc)
                    else:
                        value = float(loss.detach())
                        if math.isfinite(value):
                            loss.backward()
                stats = torch.tensor([n * value if n else 0.0, float(n), float(bool(solver_error))]
                                     + [float(p.grad is not None) for p in params], dtype=torch.float64)
                self.dist.all_reduce_sum(stats, f"step {step} of epoch {self.epoch}")
                grads = self._reduced_gradients(params, n, step)
                total = float(stats[1])
                if stats[2] > 0:
                    return losses, {"where": f"solver input ({solver_error or 'on another rank'})", "step": step,
                                    "value": math.nan}
                value = float(stats[0]) / total
                if (trip := self._loss_trip(value, step)) is not None:
                    return losses, trip
                samples = total / self.dist.sub_solver_ranks
                for i, (p, g, has) in enumerate(zip(params, grads, stats[3:])):
                    p.grad = (g / samples).to(p.dtype).view_as(p) if has > 0 else None
                    if p.grad is not None and not all_finite(p.grad):
                        return losses, {"where": f"gradient of parameter {i} {list(p.shape)}", "step": step,
                                        "value": math.nan}
                self.optimizer.step()
                self.ledger.count_step()
                losses.append(value)
        return losses, self._parameters_trip()

    def _reduced_gradients(self, params: list[torch.nn.Parameter], n: int, step: int) -> list[torch.Tensor]:
        """``Σ_r n_r·∇L_r`` of every parameter (flattened), one all-reduce per dtype and device."""
        buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.dtype, p.device), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(params)
        for (dtype, device), idx in buckets.items():
            flat = torch.cat([(params[i].grad * n if params[i].grad is not None and n
                               else torch.zeros_like(params[i])).reshape(-1) for i in idx])
            self.dist.all_reduce_sum(flat, f"the gradients of step {step} of epoch {self.epoch}")
            for i, chunk in zip(idx, flat.split([params[i].numel() for i in idx])):
                out[i] = chunk
        return out

    def _sum_ledger_counts(self, record: dict[str, Any]) -> None:
        """The solver counts of the closed epoch, summed over the ranks (optimiser steps, K and the
        timings stay this rank's: the steps are global, the ranks run side by side)."""
        keys = [k for k in record if k.endswith(("_iters", "_iters_samples", "solves"))]
        counts = torch.tensor([int(record[k]) for k in keys], dtype=torch.int64)
        self.dist.all_reduce_sum(counts, f"the iteration counts of epoch {self.epoch}")
        for k, v in zip(keys, counts.tolist()):
            record[k] = int(v)
            self.ledger.epochs[-1][k] = int(v)

    def _guarded_budget(self) -> int | None:
        return None if self.guarded is None else self.guarded.budget

    def _snapshot(self) -> dict[str, Any]:
        return {"task": copy.deepcopy(self.task.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state()}

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.task.load_state_dict(copy.deepcopy(snapshot["task"]))
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        self.generator.set_state(snapshot["generator"])
