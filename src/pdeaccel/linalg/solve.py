"""The one public entry point for linear solves: :func:`solve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from .._checks import ArgumentError, choice, integer, real
from . import _compiled
from ._batched import Budget, MethodOutput, bnorm
from .bicgstab import bicgstab
from .cg import cg
from .gmres import gmres
from .jacobi import jacobi
from .operator import LinearOperator, as_operator

METHODS = ("jacobi", "cg", "bicgstab", "gmres")
GRAD_MODES = ("implicit", "unrolled")
PRECONDITIONERS = (None, "jacobi")
_MIN_CAP = 20_000  # iterations; see _validate

#: ``monitor(direction, method, iterations)`` is called after every forward solve
#: (``direction="forward"``) and every adjoint solve (``"backward"``) with the per-sample
#: iteration counts actually run. This is how an iteration ledger sees the cost of training.
#: A monitor that also has a ``record_result(direction, result)`` method is handed every forward
#: :class:`SolveResult` as well (``converged``, ``residual_norm``): how a simulation reports
#: solves that did not converge.
Monitor = Callable[[str, str, torch.Tensor], None]


class NonFiniteError(ValueError):
    """A solve was handed NaN or inf (in b or x0): what produced them diverged.

    A ``ValueError`` so callers that only check arguments still catch it; its own type lets a
    training loop tell a diverged network output (recoverable: roll back, raise K) from a bad argument.
    """


@dataclass
class SolveResult:
    """What a solve returns. ``iterations``, ``residual_norm`` and ``converged`` are per sample.

    For GMRES ``iterations`` counts restart cycles. ``backward_iterations`` is filled in when (and
    if) the implicit adjoint solve runs during ``backward()``.
    """

    solution: torch.Tensor
    iterations: torch.Tensor
    residual_norm: torch.Tensor
    converged: torch.Tensor
    method: str
    backward_iterations: torch.Tensor | None = field(default=None)


@dataclass
class _Settings:
    method: str
    max_iters: int
    rtol: float
    atol: float
    preconditioner: str | None
    restart: int
    omega: float
    compile: bool | str = False


def solve(
    A: LinearOperator | Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    method: Literal["jacobi", "cg", "bicgstab", "gmres"] = "cg",
    max_iters: int | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    x0: torch.Tensor | None = None,
    grad: Literal["implicit", "unrolled"] = "implicit",
    preconditioner: Literal["jacobi"] | None = None,
    adjoint_max_iters: int | None = None,
    restart: int = 20,
    omega: float = 1.0,
    monitor: Monitor | None = None,
    compile: bool | Literal["auto"] = False,
) -> SolveResult:
    """Solve ``A x = b`` for every sample of a batch with a matrix-free iterative method.

    Args:
        A: a :class:`LinearOperator` or a callable ``x -> A x`` on ``[batch, *shape]`` tensors.
        b: right-hand side, ``[batch, *shape]`` (the leading axis is always the batch).
        method: ``"jacobi"`` (weighted, needs the diagonal), ``"cg"`` (symmetric positive
            definite A), ``"bicgstab"`` or ``"gmres"`` (restarted; the budget counts cycles).
        max_iters: the hard budget K. The method runs exactly K iterations unless every sample
            reaches the tolerance first; ``None`` means "until the tolerance", capped at max(10·n, 20000)
            iterations for n unknowns per sample. K may differ from call to call at no cost.
        rtol, atol: a sample stops once ``‖b − A x‖ ≤ max(atol, rtol·‖b‖)``. ``rtol=atol=0``
            runs the whole budget with no convergence checks (no host synchronisation).
            Whatever the tolerance, a sample whose residual has fallen to round-off
            (``ε·‖b − A x0‖`` for the dtype's ε) stops changing: further steps would only
            add noise, and NaN to unrolled gradients.
        x0: initial guess (default zero).
        grad: ``"implicit"`` differentiates the solution with one adjoint solve ``Aᵀλ = ḡ``
            (memory independent of K; gradients reach b and every tensor A closes over, not x0);
            ``"unrolled"`` back-propagates through the iterations (memory grows with K; gradients
            also reach x0 and are exact for the truncated solver). When nothing needs a
            gradient, either mode runs without a graph, updating its work vectors in place.
        preconditioner: ``None`` or ``"jacobi"`` (diagonal; the operator must know its diagonal).
        adjoint_max_iters: budget of the implicit adjoint solve (default: the forward budget).
        restart: GMRES restart length m.
        omega: Jacobi relaxation weight.
        monitor: called with the iteration counts of every forward and adjoint solve.
        compile: run the loop as one ``torch.compile``d graph (K stays a runtime value: changing it
            never recompiles; a new shape, dtype or operator code compiles once). ``True``
            compiles at the first solve, ``False`` never; ``"auto"`` solves eagerly until the
            iterations run on this operator and shape would have repaid the estimated compile time,
            then compiles (see :mod:`pdeaccel.linalg._compiled`). Only solves that record no
            graph are compiled (everything but an unrolled solve that needs a gradient); a
            failed compilation warns and solves eagerly.

    Non-convergence is reported in the result (``converged``), never raised.

    Example:
        >>> from pdeaccel import Grid, solve, LinearOperator, laplacian
        >>> g = Grid(32, boundary="dirichlet")
        >>> A = LinearOperator(lambda u: laplacian(u, g, scale=-1.0), symmetric=True)  # -Δ
        >>> b = torch.ones(4, 1, 32, dtype=torch.float64)
        >>> result = solve(A, b, method="cg", max_iters=100)
        >>> bool(result.converged.all())
        True
    """
    op = as_operator(A)
    _compiled.validate_setting(compile)
    settings, x0, r0 = _validate(op, b, method, max_iters, rtol, atol, x0, grad, preconditioner,
                                 adjoint_max_iters, restart, omega)
    settings.compile = compile
    adjoint_budget = settings.max_iters if adjoint_max_iters is None else int(adjoint_max_iters)

    # r0 = b − A x0 carries the graph of b, x0 and every tensor A closes over
    needs_graph = torch.is_grad_enabled() and r0.requires_grad

    if grad == "unrolled" and needs_graph:
        out = _run(op, b, x0, r0, settings, inplace=False)
        result = _result(out, b, settings)
        _notify(monitor, method, out, result)
        return result

    with torch.no_grad():
        out = _run(op, b.detach(), x0.detach(), r0.detach(), settings, inplace=True)
    result = _result(out, b, settings)
    _notify(monitor, method, out, result)
    if not needs_graph:
        return result
    # x = x* + A⁻¹(b − A x*): the correction is zero in value, but its derivative is A⁻¹ applied
    # to d(b − A x*), i.e. exactly the implicit-function gradient, reaching b and A's tensors.
    residual = b - op.matvec(out.x)
    if residual.requires_grad:
        adjoint_settings = _Settings(**{**settings.__dict__, "max_iters": adjoint_budget})
        correction = _AdjointSolve.apply(residual, op, adjoint_settings, result, monitor)
        result.solution = out.x + correction
    return result


def _notify(monitor: Monitor | None, method: str, out: MethodOutput, result: "SolveResult") -> None:
    if monitor is None:
        return
    monitor("forward", method, out.iterations)
    record = getattr(monitor, "record_result", None)
    if record is not None:
        record("forward", result)


class _AdjointSolve(torch.autograd.Function):
    """Forward: zeros. Backward: λ = A⁻ᵀ ḡ (the adjoint solve, with its own budget)."""

    @staticmethod
    def forward(ctx, residual, op, settings, result, monitor):
        ctx.op, ctx.settings, ctx.result, ctx.monitor = op, settings, result, monitor
        return torch.zeros_like(residual)

    @staticmethod
    def backward(ctx, grad_out):
        op_t = ctx.op.transpose()
        with torch.no_grad():
            g = grad_out.detach()
            x0 = torch.zeros_like(g)
            out = _run(op_t, g, x0, g, ctx.settings, inplace=True)
        ctx.result.backward_iterations = out.iterations
        if ctx.monitor is not None:
            ctx.monitor("backward", ctx.settings.method, out.iterations)
        return out.x, None, None, None, None


def _run(op: LinearOperator, b: torch.Tensor, x0: torch.Tensor, r0: torch.Tensor, s: _Settings,
         *, inplace: bool) -> MethodOutput:
    """Run the method; ``inplace`` (only under no_grad) lets it overwrite its own work vectors."""
    threshold = torch.clamp(s.rtol * bnorm(b.detach()), min=s.atol)
    budget = Budget.build(s.max_iters, threshold, r0, checks_tolerance=s.rtol > 0 or s.atol > 0)
    inv_diag = None
    if s.method == "jacobi" or s.preconditioner == "jacobi":
        inv_diag = 1.0 / op.get_diagonal()
    note = None
    if inplace:  # records no graph: the compiled loop may run it
        out, note = _compiled.run(s.compile, s.method, op, b, x0, r0, budget, inv_diag, s.omega, s.restart)
        if out is not None:
            return out
    out = _run_eager(op, b, x0, r0, s, budget, inv_diag, inplace=inplace)
    if note is not None:
        note(out)
    return out


def _run_eager(op: LinearOperator, b: torch.Tensor, x0: torch.Tensor, r0: torch.Tensor, s: _Settings, budget: Budget,
               inv_diag: torch.Tensor | None, *, inplace: bool) -> MethodOutput:
    if s.method == "jacobi":
        return jacobi(op, b, x0, r0, budget, omega=s.omega, inv_diag=inv_diag, inplace=inplace)
    if s.method == "cg":
        return cg(op, b, x0, r0, budget, inv_diag=inv_diag, inplace=inplace)
    if s.method == "bicgstab":
        return bicgstab(op, b, x0, r0, budget, inv_diag=inv_diag, inplace=inplace)
    return gmres(op, b, x0, r0, budget, restart=s.restart, inv_diag=inv_diag, inplace=inplace)


def _result(out: MethodOutput, b: torch.Tensor, s: _Settings) -> SolveResult:
    threshold = torch.clamp(s.rtol * bnorm(b.detach()), min=s.atol)
    res = out.residual_norm.detach()
    return SolveResult(out.x, out.iterations, res, res <= threshold, s.method)


def check_settings(method: str, max_iters: int | None, rtol: float, atol: float, grad: str,
                   preconditioner: str | None, adjoint_max_iters: int | None, restart: int, omega: float) -> None:
    """Raise an ArgumentError (a ValueError and a TypeError) naming the first solver setting that
    is not acceptable."""
    choice("solver method", method, METHODS)
    choice("grad mode", grad, GRAD_MODES)
    choice("preconditioner", preconditioner, PRECONDITIONERS)
    integer("max_iters", max_iters, minimum=0, optional=True, fix="None runs until the tolerance.")
    integer("adjoint_max_iters", adjoint_max_iters, minimum=0, optional=True)
    real("rtol", rtol, minimum=0)
    real("atol", atol, minimum=0)
    if max_iters is None and rtol == 0 and atol == 0:
        # "until the tolerance" with no tolerance would silently run the whole safety cap (20000+ iterations)
        raise ArgumentError("max_iters=None runs until the tolerance, but rtol = atol = 0 sets none; give a budget "
                            "max_iters=K (exactly K iterations) or a tolerance rtol/atol > 0.")
    integer("restart (GMRES)", restart, minimum=1)
    if real("omega (Jacobi relaxation)", omega, positive=True, maximum=2, fix=_OMEGA) == 2:
        raise ArgumentError(f"omega (Jacobi relaxation) must be < 2, got {omega!r}. {_OMEGA}")


_OMEGA = "Weighted Jacobi converges only for omega in (0, 2)."


def _validate(op, b, method, max_iters, rtol, atol, x0, grad, preconditioner, adjoint_max_iters,
              restart, omega):
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor of shape [batch, ...], got {type(b).__name__}.")
    if b.dim() < 2:
        raise ValueError(
            f"b must have a leading batch axis, shape [batch, ...]; got shape {list(b.shape)}. "
            "For a single system use b[None]."
        )
    if b.numel() == 0:
        raise ValueError(f"b is empty (shape {list(b.shape)}); every axis needs at least one entry.")
    if not b.is_floating_point():
        raise TypeError(f"b must be a floating-point tensor, got dtype {b.dtype}.")
    if not bool(torch.isfinite(b).all()):
        raise NonFiniteError("b (the right-hand side) contains NaN or inf values; check what produced it.")
    check_settings(method, max_iters, rtol, atol, grad, preconditioner, adjoint_max_iters, restart, omega)
    op.check_input(b, "b (the right-hand side)")
    if x0 is None:
        x0 = torch.zeros_like(b)
    elif not isinstance(x0, torch.Tensor) or x0.shape != b.shape:
        shape = list(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0 must have the shape of b {list(b.shape)}, got {shape}.")
    elif not bool(torch.isfinite(x0).all()):
        raise NonFiniteError("x0 (the initial guess) contains NaN or inf values.")
    if (method == "jacobi" or preconditioner == "jacobi"):
        diag = op.get_diagonal()
        if diag is None:
            raise ValueError(
                f"{'Jacobi iteration' if method == 'jacobi' else 'Jacobi preconditioning'} needs the "
                "operator's diagonal: build it as LinearOperator(matvec, diagonal=...)."
            )
        if not isinstance(diag, torch.Tensor):
            raise TypeError(f"the operator's diagonal must be a torch.Tensor, got {type(diag).__name__}.")
        try:
            fits = torch.broadcast_shapes(diag.shape, b.shape) == b.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"the operator's diagonal has shape {list(diag.shape)}, which does not broadcast to the "
                f"shape of b {list(b.shape)}."
            )
        if not bool((diag != 0).all()):
            raise ValueError("the operator's diagonal has zero entries; Jacobi cannot divide by them.")
    Ax0 = op.matvec(x0)
    if not isinstance(Ax0, torch.Tensor) or Ax0.shape != b.shape:
        shape = list(Ax0.shape) if isinstance(Ax0, torch.Tensor) else type(Ax0).__name__
        raise ValueError(
            f"the operator is not square on this input: A maps shape {list(b.shape)} to {shape}. "
            "A must return a tensor of the same shape as its input."
        )
    r0 = b - Ax0
    n = b[0].numel()
    # "until the tolerance" still needs a cap against stagnation; Krylov methods converge in at most
    # n steps in exact arithmetic, Jacobi's count grows with the condition number (≈ n² for a 1D
    # Laplacian), so small problems get a generous floor
    cap = max(10 * n, _MIN_CAP)
    K = cap if max_iters is None else int(max_iters)
    if method == "gmres" and max_iters is None:
        K = max(1, cap // restart)
    return _Settings(method, K, float(rtol), float(atol), preconditioner, int(restart), float(omega)), x0, r0
