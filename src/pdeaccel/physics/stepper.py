"""The one stepper contract every time stepper of :mod:`pdeaccel.physics` keeps.

A stepper advances the state of one PDE by one time step::

    next_state = stepper(state, solver, **budgets)

* ``state`` in, the next ``state`` out, of the same kind (a tensor for heat and Burgers, the pair
  ``(velocity, pressure)`` for :class:`~pdeaccel.physics.navier_stokes.NavierStokes2D`, a
  :class:`~pdeaccel.physics.incompressible.FlowState` for
  :class:`~pdeaccel.physics.incompressible.MACFlowSolver`).
* ``solver``: the :class:`~pdeaccel.linalg.SolverConfig` of this call's linear solves, passed per
  call so that a budget (PRDP's K) can change at every step; steppers with a sensible default
  accept ``None``.
* ``**budgets``: any further budget of the step as a keyword, e.g. ``picard_iterations=`` of the
  nonlinear steppers (the ``picard`` budget).
* Its class docstring states the PDE, the discretisation and the time scheme.

Each stepper keeps its discretisation (grid, coefficients, Δt) from construction; what may change
from one call to the next is only what is passed. :class:`Stepper` is a runtime-checkable
:class:`typing.Protocol`, so ``isinstance(x, Stepper)`` checks that an object is callable in this
way (the arguments' meaning is the contract above, which a Protocol cannot check).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stepper(Protocol):
    def __call__(self, state: Any, solver: Any = None, /, **budgets: Any) -> Any:
        """The state one time step later (see the module docstring)."""
        ...
