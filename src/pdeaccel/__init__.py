"""pdeaccel: cheaper training of neural PDE solvers with physics in the loop.

The differentiable grid-physics core (grids, stencils, budgeted iterative solvers, implicit
steppers) and the two accelerators built on it, PRDP and NeuralStagger.
"""

from .grid import Grid
from .linalg import LinearOperator, SolveResult, SolverConfig, solve
from .stencils import divergence, gradient, laplacian, mac_curl, mac_divergence, mac_gradient, upwind_advection

__version__ = "0.1.0"

__all__ = [
    "Grid", "LinearOperator", "SolveResult", "SolverConfig", "solve",
    "laplacian", "gradient", "divergence", "upwind_advection", "mac_curl", "mac_divergence", "mac_gradient",
]
