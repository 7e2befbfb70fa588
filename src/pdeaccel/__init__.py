"""pdeaccel: neural PDE solvers trained with numerical physics in the loop, and two accelerators.

The differentiable grid-physics core: :mod:`~pdeaccel.grid` (uniform 1D/2D/3D grids),
:mod:`~pdeaccel.stencils` (finite differences, the MAC layout), :mod:`~pdeaccel.linalg` (batched
iterative solvers with an iteration budget, differentiated implicitly or unrolled) and
:mod:`~pdeaccel.physics` (implicit steppers for heat, Burgers and 2D Navier–Stokes, Poisson
solves, flow environments and the MAC reference flow solver). On top of it: the networks
(:mod:`~pdeaccel.nets`), the physics-constrained flow solver (:mod:`~pdeaccel.neural_flow`,
trained by the residuals of :mod:`~pdeaccel.losses`), and the two accelerators: PRDP
(:mod:`~pdeaccel.prdp`, progressively refined solver budgets during training) and NeuralStagger
(:mod:`~pdeaccel.stagger`, a flow solver split into coarse sub-solvers in space and time).
:mod:`~pdeaccel.train`, :mod:`~pdeaccel.experiments` and the ``pdeaccel`` command line run them.

This module re-exports the core's most used names.
"""

from .grid import Grid
from .linalg import LinearOperator, SolveResult, SolverConfig, solve
from .stencils import divergence, gradient, laplacian, mac_curl, mac_divergence, mac_gradient, upwind_advection

__version__ = "0.1.0"

__all__ = [
    "Grid", "LinearOperator", "SolveResult", "SolverConfig", "solve",
    "laplacian", "gradient", "divergence", "upwind_advection", "mac_curl", "mac_divergence", "mac_gradient",
]
