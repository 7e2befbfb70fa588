"""Optimal flow control through differentiable flow simulators (Wandel et al. 2021's demonstration,
reused by NeuralStagger): steer the vortex-shedding frequency behind an obstacle with a boundary
control (the inflow speed, a cylinder's rotation) by back-propagating through a window of time
steps of a learned solver or of the numerical one.

The pieces, independent of any named problem (those live in :mod:`pdeaccel.experiments.control`):

* :func:`spectral_frequency` — a differentiable estimate of a signal's dominant frequency: the
  centroid of its power spectrum in a band around the spectral peak (see there).
* :class:`ControlledEnvironment` — a :class:`~pdeaccel.physics.flow.FlowEnvironment`
  whose prescribed face velocities are an affine function of named scalar controls, so the
  environment (and everything a simulator derives from it) is differentiable in them.
* Simulators with one interface (``bind(env, probe)`` → a stepper with ``rest()``, ``step(state)``,
  ``sample_dt``): :class:`NumericalSimulator` (the differentiable
  :class:`~pdeaccel.physics.incompressible.MACFlowSolver`; its pressure solves go through
  :func:`pdeaccel.linalg.solve` with implicit gradients, so back-propagation costs one adjoint solve
  per solve whatever the iteration count) and :class:`LearnedSimulator` (any flow model of
  :mod:`pdeaccel.flow_model`; a NeuralStagger model also at a coarser resolution it offers, through
  a subset of its sub-solvers).
* :func:`simulate` — a rollout that records the probe, with gradient checkpointing over chunks of
  steps (:func:`torch.utils.checkpoint.checkpoint`), so the memory of back-propagation through a
  window of W steps is that of one chunk plus W/chunk states.
* :func:`optimise` — Adam on the controls, minimising ``(f − f_target)²``; every iteration runs the
  warm-up from rest without gradient and then the window with gradient, so the objective is a
  fixed function of the controls (the dependence of the window's first state on the controls is
  not differentiated, as in the paper's setup).
"""

from .environment import ControlledEnvironment, Probe
from .optimise import ControlRun, ControlSettings, Evaluation, evaluate, optimise
from .simulators import Bound, LearnedSimulator, NumericalSimulator, State, Velocity, simulate
from .spectral import peak_share, power_spectrum, spectral_frequency

__all__ = ["Bound", "ControlRun", "ControlSettings", "ControlledEnvironment", "Evaluation", "LearnedSimulator",
           "NumericalSimulator", "Probe", "State", "Velocity", "evaluate", "optimise", "peak_share", "power_spectrum",
           "simulate", "spectral_frequency"]
