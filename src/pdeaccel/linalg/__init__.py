"""Matrix-free iterative linear solvers with an iteration budget, differentiable two ways."""

from .operator import LinearOperator, as_operator
from .solve import GRAD_MODES, METHODS, Monitor, SolveResult, solve

__all__ = ["LinearOperator", "as_operator", "solve", "SolveResult", "Monitor", "METHODS", "GRAD_MODES"]
