"""Implicit time steppers and PDE solves built on :mod:`pdeaccel.linalg`.

Every solve goes through a :class:`~pdeaccel.linalg.SolverConfig`, so its budget, its grad mode
and its iteration monitor are the caller's. Every time stepper keeps one contract,
``stepper(state, solver, **budgets) -> next state`` (:class:`~pdeaccel.physics.stepper.Stepper`).
"""

from .burgers import BurgersStepper
from .flow import FlowEnvironment, Obstacle, channel_with_box, channel_with_cylinder, from_mask, lid_driven_cavity
from .heat import HEAT_SCHEMES, HeatStepper
from .incompressible import FlowState, MACFlowSolver
from .initial_conditions import random_fourier
from .navier_stokes import NS_METHODS, NavierStokes2D, decaying_turbulence, downsample_velocity, taylor_green
from .poisson import poisson_operator, sine_series_source, solve_poisson
from .stepper import Stepper

__all__ = ["BurgersStepper", "HeatStepper", "HEAT_SCHEMES", "poisson_operator", "solve_poisson", "sine_series_source",
           "random_fourier", "NavierStokes2D", "NS_METHODS", "taylor_green", "decaying_turbulence",
           "downsample_velocity", "FlowEnvironment", "Obstacle", "lid_driven_cavity", "channel_with_box",
           "channel_with_cylinder", "from_mask", "MACFlowSolver", "FlowState", "Stepper"]
