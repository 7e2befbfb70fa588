"""Flow environments on a bounded MAC grid: where the fluid is and what the boundaries prescribe.

One module a room: :mod:`.obstacles` (rigid obstacles and their rasterisation),
:mod:`.environment` (:class:`FlowEnvironment`), :mod:`.builders` (cavity, channels, pipe, masks),
:mod:`.topology` (cell and face classes, closed regions, boundary fluxes) and :mod:`.operators`
(:class:`MACOperators`: the boundary-aware stencils the reference solver and the loss share). The
MAC index helpers (spacing, face shapes, coordinates, shifts) are in :mod:`pdeaccel.stencils`.

An environment is *data*, the same for the numerical reference solver
(:class:`~pdeaccel.physics.incompressible.MACFlowSolver`) and for a physics-constrained network:

* ``fluid`` — cell mask ``[B, 1, *cells]``, 1 = fluid, 0 = not fluid (wall, obstacle, inflow or
  outflow cell).
* ``outflow`` — cell mask ``[B, 1, *cells]`` of *open* cells (a subset of the non-fluid ones, on
  the outer layer of the grid): the pressure there is 0 and the velocity leaves freely
  (zero normal gradient).
* ``face_velocity`` — one array per axis ``d``, ``[B, 1, *mac_face_shape(grid, d)]``: the velocity
  component ``d`` prescribed on faces normal to ``d`` (no-slip walls 0, the lid speed, the inflow
  profile, the rigid motion of an obstacle). It is used wherever the face is not free.
* ``face_mask`` / ``face_free`` / ``face_open`` (derived) — per face: prescribed, free unknown,
  or extrapolated (inside an outflow region).
* ``mu``, ``rho`` (per sample), ``dt``, ``body_force`` (per sample, an acceleration).

Layout (that of :mod:`pdeaccel.stencils`): N cells of width ``h = L/N`` per axis; face ``k`` of
axis ``d`` sits at ``x_d = k·h`` (the left face of cell ``k``), N+1 faces on a bounded axis, N on
a periodic one. Walls are *cells*: the builders surround the fluid by one layer of non-fluid
cells (as in Wandel et al. 2021), so that the fluid/solid interface lies on cell faces and a
wall, a lid, an inflow and an obstacle are the same kind of data. Physical coordinates are grid
coordinates minus ``origin`` (the builders put the origin on the first wall face, so a cavity of
side L occupies ``[0, L]²`` while the grid spans ``[−h, L+h]²``). Space outside the grid counts
as a wall at rest.

Classification of a face from its two adjacent cells (F fluid, S solid, O outflow, · outside):

=================  =========================================================================
free               FF, FO — an unknown of the solver
prescribed         any pair with S, and F· — value from ``face_velocity`` (``face_mask`` = 1)
open               OO, O· — extrapolated from the neighbouring free faces (zero gradient)
=================  =========================================================================

Obstacles (:class:`Obstacle`: box, cylinder, sphere) may translate (``velocity``) and rotate
(``angular_velocity``, a prescribed surface velocity; the shape itself is not rotated). They are
rasterised onto cell centres; :meth:`FlowEnvironment.shifted` moves them by ``velocity·dt`` and
rasterises again.
"""

from .builders import channel, channel_with_box, channel_with_cylinder, from_mask, lid_driven_cavity, pipe
from .environment import FlowEnvironment
from .obstacles import Obstacle, ObstacleShape, rasterise
from .operators import MACOperators
from .topology import BEYOND, FLUID, FREE, INTERIOR, OPEN, OUTFLOW, OUTSIDE, PRESCRIBED, SOLID, classify_faces

__all__ = ["FlowEnvironment", "MACOperators", "Obstacle", "ObstacleShape", "rasterise", "lid_driven_cavity", "channel",
           "channel_with_box", "channel_with_cylinder", "pipe", "from_mask", "classify_faces",
           "FLUID", "SOLID", "OUTFLOW", "OUTSIDE", "FREE", "PRESCRIBED", "INTERIOR", "OPEN", "BEYOND"]
