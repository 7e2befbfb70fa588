"""The compiled path of the solvers: chunks of iterations as ``torch.compile``d graphs.

Small problems (the PRDP grids: 30–64 points a side, small batches) are overhead-bound in eager
PyTorch: a CG iteration is about 35 small operations, a few µs of dispatch each, while its
arithmetic takes a few µs in all. Here each method's iteration is a pure function of its state
(``*_step`` in the method's file), and :data:`CHUNKS` of 16, 4 and 1 iterations of it, unrolled,
are each compiled into one graph. A solve of budget K runs the largest chunks that fit, greedily
(K = 25: 16 + 4 + 4 + 1, four calls), with the loop over chunks in Python, so

* changing K never recompiles: every chunk size of a key is compiled at its first solve, and any K
  is a sum of them (``tests/test_compiled_solvers.py`` counts this);
* a new shape, dtype, device, operator code or method compiles once (``dynamic=False``: fixed
  shapes give the fastest kernels) and is cached;
* the implicit mode's adjoint solve runs the same compiled chunks (for a symmetric operator the
  very same graphs as the forward solve);
* with a tolerance, convergence is checked between chunks (one host synchronisation per chunk):
  inside a chunk a sample that has stopped is frozen and not counted, exactly as in the eager loop,
  so the result and the iteration counts are the eager ones to round-off; at most 15 iterations of
  frozen work are wasted.

Why chunks and not one ``while_loop`` graph over the whole budget (K as a tensor): inductor runs
such a loop's body through its wrapper at every trip, an overhead per iteration as large as the
eager one at these sizes; a chunk pays it once per 16 iterations. Measurements:
``benchmarks/results/solvers.md`` ("Compiled path").

The operator's matvec is traced into the graph. A stencil operator is a closure created anew at
every step (``HeatStepper.operator`` and friends); torch.compile guards a closure on its code
object and on the values it captures, so a new closure of the same code over the same grid and
coefficients reuses the compiled graph (``tests/test_compiled_solvers.py`` counts this).
Captured *tensors* (a learned diffusivity) are graph inputs: their values may change freely.

Only solves nobody differentiates through go this way (the forward solve of the implicit mode and
every solve under ``no_grad``, the adjoint solve): an unrolled solve that records a graph stays
eager. If compilation fails (no C++ compiler, an operator torch.compile cannot trace), the solve
warns once per operator and shape and runs eagerly, with the same result.

On a GPU the same chunks compile to fused kernels (one launch sequence per chunk instead of per
operation).

When the path is used: ``SolverConfig.compile`` (``True``, ``False`` or the ``"auto"`` rule below),
documented in the README.
"""

from __future__ import annotations

import time
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._checks import choice
from ._batched import Budget, MethodOutput
from .bicgstab import bicgstab_init, bicgstab_step
from .cg import cg_init, cg_step
from .gmres import gmres_cycle, gmres_init
from .jacobi import jacobi_init, jacobi_step
from .operator import LinearOperator

COMPILE_SETTINGS = ("auto", True, False)

# ---- the "auto" rule: a ski-rental decision per cache key, from measured costs ----------------
#
# Compiling costs a one-off C seconds and then saves s seconds per iteration. Not knowing how long
# a run will be, "auto" solves eagerly until the savings compiling *would* have made reach C, then
# compiles: never more than twice the cost of the better fixed choice, whatever the run length,
# and nothing for a short run (a test, a demo, a few hundred solves). The savings are counted
# from the iterations actually run and a per-iteration estimate, not from timings, so the switch
# happens at the same solve in every run of the same program (results are reproducible; a
# resumed training run counts afresh, though, so where a resumed run must be bit-identical to an
# uninterrupted one, fix compile=True or False).
# The estimates below are conservative: compile times for a quiet machine (GMRES traces its whole
# restart cycle, so its graph grows with m²) and per-iteration savings at the smallest sizes (1D,
# 30 points, batch 1) of about half those measured; larger problems save more per iteration, which
# only makes the rule compile later than it could. The measurements behind them are in
# benchmarks/results/solvers.md ("Compiled path").
#: "auto" leaves solves with more unknowns in all (batch included) eager: there the compiled loop
#: stops paying for itself (benchmarks/results/solvers.md)
AUTO_MAX_NUMEL = 2**17
#: estimated compile time (s) of one key; GMRES grows with its restart length (graph size ~ m²)
COMPILE_SECONDS = {"jacobi": 30.0, "cg": 30.0, "bicgstab": 30.0, "gmres": 10.0}
GMRES_COMPILE_SECONDS_PER_STEP2 = 2.0
#: eager minus compiled time per iteration (µs) at the smallest sizes (per-operation overhead)
SAVING_US_PER_ITERATION = {"jacobi": 15.0, "cg": 70.0, "bicgstab": 140.0, "gmres": 60.0}  # gmres: per Arnoldi step


def compile_cost_estimate(method: str, restart: int = 20) -> float:
    """Estimated seconds to compile one key of ``method`` (see the constants above)."""
    base = COMPILE_SECONDS[method]
    return base + (GMRES_COMPILE_SECONDS_PER_STEP2 * restart * restart if method == "gmres" else 0.0)


def saving_estimate(method: str, iterations: int, restart: int = 20) -> float:
    """Estimated seconds the compiled loop saves over ``iterations`` eager iterations (GMRES: cycles)."""
    steps = iterations * (restart + 1) if method == "gmres" else iterations
    return steps * SAVING_US_PER_ITERATION[method] * 1e-6


# ---- bookkeeping --------------------------------------------------------------------------------


@dataclass
class CompileStats:
    """Process-wide counts of the compiled path (see :func:`compile_stats`)."""

    compiles: int = 0  # graphs torch.compile built for solver loops (first compiles and recompiles)
    compile_seconds: float = 0.0  # wall time of the calls that compiled (tracing + code generation + first run)
    compiled_solves: int = 0  # solves that ran a compiled loop
    eager_solves: int = 0  # solves that could have been compiled but ran eagerly ("auto" still warming up, or a fallback)
    fallbacks: int = 0  # keys whose compilation failed (they run eagerly from then on)
    keys: int = 0  # distinct (method, operator code, shape, dtype, device, ...) keys seen


_STATS = CompileStats()


def compile_stats() -> CompileStats:
    """A copy of the process-wide counters of the compiled solver path."""
    return CompileStats(**_STATS.__dict__)


def reset_compile_stats() -> None:
    for f in _STATS.__dataclass_fields__:
        setattr(_STATS, f, type(getattr(_STATS, f))())


@dataclass
class _Entry:
    chunks: dict[int, Callable] | None = None  # the torch.compile'd chunks by size, built on first use
    failed: bool = False
    saving: float = 0.0  # estimated seconds compiling would have saved so far ("auto")
    info: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple, _Entry] = {}
_AVAILABLE: bool | None = None


def clear_cache() -> None:
    """Forget every compiled loop (the next solve of each key compiles again under ``compile=True``)."""
    _CACHE.clear()


def available() -> bool:
    """Whether this torch has ``torch.compile`` at all (a C++ compiler is only found out by
    compiling: a failure then falls back to eager with a warning)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = hasattr(torch, "compile")
    return _AVAILABLE


# ---- the loop -----------------------------------------------------------------------------------


#: iterations per compiled call, largest first; any K is a greedy sum of them
CHUNKS = (16, 4, 1)


def chunk_sizes(method: str) -> tuple[int, ...]:
    """The chunk sizes of ``method``: GMRES compiles one restart cycle (already m Arnoldi steps,
    and its compile time grows with the square of the traced length)."""
    return (1,) if method == "gmres" else CHUNKS


def chunk_plan(K: int, sizes: tuple[int, ...] = CHUNKS) -> list[int]:
    """The chunk sizes a budget of K runs, in order (largest first, greedily)."""
    plan = []
    for n in sizes:
        plan += [n] * (K // n)
        K %= n
    return plan


def _make_chunk(step: Callable, n: int) -> Callable:
    """The function torch.compile sees: ``n`` iterations of ``step``, unrolled.

    Same stopping rule as :class:`~pdeaccel.linalg._batched.Budget`: before an iteration a sample
    is active while its residual norm is above its stop level; an inactive sample is frozen by the
    step and, with a tolerance, not counted (without one every sample counts every iteration)."""

    def chunk(matvec, stop_level, checks_tolerance, consts, iterations, state):
        for _ in range(n):
            active = state[-1] > stop_level
            iterations = iterations + torch.where(checks_tolerance, active.to(iterations.dtype), 1)
            state = step(matvec, consts, state, active)
        return iterations, state

    # a code object of its own per key and size: torch.compile keeps its cache (and its recompile
    # limit) per code object, and one shared function would run out of both across methods and shapes
    code = chunk.__code__.replace()
    return types.FunctionType(code, chunk.__globals__, chunk.__name__, chunk.__defaults__, chunk.__closure__)


def _compile(fn: Callable) -> Callable:
    """torch.compile with fixed shapes (fastest kernels; a new shape is a new graph), the whole
    chunk as one graph (a graph break would bring back the per-operation overhead) and a C++
    wrapper (less Python per call; a longer first compile)."""
    return torch.compile(fn, dynamic=False, fullgraph=True, options={"cpp_wrapper": True, "size_asserts": False})


def _code_of(fn: Any) -> Any:
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__code__", type(fn))


def _step(method: str, restart: int) -> Callable:
    if method == "cg":
        return cg_step
    if method == "jacobi":
        return jacobi_step
    if method == "bicgstab":
        return bicgstab_step
    def gmres_step(matvec, consts, state, active):
        return gmres_cycle(matvec, consts, state, active, restart=restart)
    return gmres_step


def _shape(t: torch.Tensor | None):
    return None if t is None else (tuple(t.shape), t.dtype)


Note = Callable[[MethodOutput], None]


def run(setting: bool | str, method: str, op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor,
        budget: Budget, inv_diag: torch.Tensor | None, omega: float, restart: int) -> tuple[MethodOutput | None, Note | None]:
    """Run the compiled loop: ``(output, None)``; or ``(None, note)`` for the eager path (setting
    off, compilation unavailable or failed, or "auto" still eager for this key), where ``note``,
    when not ``None``, wants the eager output (the "auto" rule's account of this key).
    Only call without autograd recording."""
    if setting is False or not available() or (setting == "auto" and b.numel() > AUTO_MAX_NUMEL):
        return None, None
    key = (method, restart if method == "gmres" else None, _code_of(op.matvec), tuple(b.shape), b.dtype, b.device,
           _shape(inv_diag))
    entry = _CACHE.get(key)
    if entry is None:
        entry = _CACHE[key] = _Entry()
        _STATS.keys += 1
    if entry.failed:
        _STATS.eager_solves += 1
        return None, None
    if setting == "auto" and entry.chunks is None and entry.saving < compile_cost_estimate(method, restart):
        _STATS.eager_solves += 1

        def note(out: MethodOutput) -> None:
            iterations = int(out.iterations.max()) if out.iterations.numel() else 0
            entry.saving += saving_estimate(method, iterations, restart)

        return None, note

    # distinct contiguous inputs: torch.compile guards on strides and on which inputs alias (an
    # adjoint solve passes b = r0), so either would compile a second graph
    b, x, r = _distinct(b.contiguous(), x.contiguous(), r.contiguous())
    if method == "cg":
        consts, state = (inv_diag,), cg_init(b, x, r, inv_diag)
    elif method == "jacobi":
        consts, state = (b, omega * inv_diag), jacobi_init(b, x, r)
    elif method == "bicgstab":
        consts, state = (r.clone(), inv_diag), bicgstab_init(b, x, r)
    else:
        consts, state = (b, inv_diag, budget.stop_level), gmres_init(b, x, r)
    # the state a chunk returns never aliases itself or the constants: nor may the first one (CG's
    # p = r), or the first call would compile a graph of its own
    state = _distinct_from(state, [t for t in consts if isinstance(t, torch.Tensor)])
    stop_level = budget.stop_level
    checks = torch.tensor(budget.checks_tolerance, device=b.device)
    iterations = torch.zeros(stop_level.shape, dtype=torch.int64, device=b.device)
    graphs = _graph_count()
    started = time.perf_counter()
    try:
        if entry.chunks is None:
            step = _step(method, restart)
            entry.chunks = {n: _compile(_make_chunk(step, n)) for n in chunk_sizes(method)}
        initial, used = (iterations, state), set()
        for n in chunk_plan(budget.max_iters, chunk_sizes(method)):
            used.add(n)
            iterations, state = entry.chunks[n](op.matvec, stop_level, checks, consts, iterations, state)
            if budget.checks_tolerance and not bool((state[-1] > stop_level).any()):
                break
        if _graph_count() > graphs:
            # this solve compiled (the key's first solve, or a new variant of its guards, e.g. the
            # operator's captured tensor without grad under no_grad): compile the sizes it did not
            # run as well, on its initial state (chunks are pure functions), so that no later budget
            # ever compiles
            for n in set(entry.chunks) - used:
                entry.chunks[n](op.matvec, stop_level, checks, consts, *initial)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: solve eagerly
        entry.failed, entry.chunks = True, None
        _STATS.fallbacks += 1
        _STATS.eager_solves += 1
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        warnings.warn(f"pdeaccel: compiling the {method} loop failed ({type(exc).__name__}: {first_line}); "
                      "solving eagerly (compile=False silences this).", RuntimeWarning, stacklevel=4)
        return None, None
    new_graphs = _graph_count() - graphs
    if new_graphs:
        _STATS.compiles += new_graphs
        _STATS.compile_seconds += time.perf_counter() - started
    _STATS.compiled_solves += 1
    return MethodOutput(state[0], iterations, state[-1]), None


def _distinct_from(state: tuple, others: list[torch.Tensor]) -> tuple:
    """``state`` with every tensor that shares storage with an earlier one (or with ``others``) cloned."""
    seen = [t.untyped_storage().data_ptr() for t in others]
    out = []
    for t in state:
        if isinstance(t, torch.Tensor):
            if t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.append(t.untyped_storage().data_ptr())
        out.append(t)
    return tuple(out)


def _distinct(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out: list[torch.Tensor] = []
    for t in tensors:
        if any(t.untyped_storage().data_ptr() == o.untyped_storage().data_ptr() for o in out):
            t = t.clone()
        out.append(t)
    return tuple(out)


def _graph_count() -> int:
    """Graphs torch.compile has built in this process (its own counter; a recompile is a graph)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover
        return 0


def validate_setting(value: Any) -> None:
    choice("compile", value, COMPILE_SETTINGS)
