"""What the nonlinear steppers (Burgers, coupled Navier–Stokes) share about their Picard count."""

from __future__ import annotations

from ..linalg import SolverConfig


def refuse_nonlinear_iters(solver: SolverConfig) -> None:
    """The Picard count is an argument of the step (the ``picard`` budget), not a solver setting."""
    if getattr(solver, "nonlinear_iters", None) is not None:
        raise ValueError(f"SolverConfig.nonlinear_iters={solver.nonlinear_iters} is no longer read: pass the Picard "
                         "count to the step as picard_iterations= (the 'picard' budget).")
