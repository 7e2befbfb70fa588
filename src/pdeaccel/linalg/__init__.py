"""Matrix-free iterative linear solvers with an iteration budget, differentiable two ways."""

from .operator import LinearOperator, as_operator
from .solve import GRAD_MODES, METHODS, Monitor, NonFiniteError, SolveResult, solve
from .config import SolverConfig
from .deflation import SubdomainDeflation
from .monitor import IterationLog

__all__ = ["IterationLog", "LinearOperator", "as_operator", "solve", "SolveResult", "SolverConfig", "Monitor", "NonFiniteError", "METHODS", "GRAD_MODES",
           "SubdomainDeflation"]
