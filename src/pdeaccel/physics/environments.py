"""The former home of :mod:`pdeaccel.physics.flow` (and of three MAC index helpers, now in
:mod:`pdeaccel.stencils`); kept so that ``pdeaccel.physics.environments`` imports go on working.
New code imports from :mod:`pdeaccel.physics.flow`."""

from ..stencils import face_neighbour_cells, mac_spacing, shift
from .flow import (BEYOND, FLUID, FREE, INTERIOR, OPEN, OUTFLOW, OUTSIDE, PRESCRIBED, SOLID, FlowEnvironment, Obstacle,
                   ObstacleShape, channel, channel_with_box, channel_with_cylinder, classify_faces, from_mask,
                   lid_driven_cavity, pipe, rasterise)

__all__ = ["FlowEnvironment", "Obstacle", "ObstacleShape", "rasterise", "lid_driven_cavity", "channel",
           "channel_with_box", "channel_with_cylinder", "pipe", "from_mask", "classify_faces", "shift", "mac_spacing",
           "face_neighbour_cells", "FLUID", "SOLID", "OUTFLOW", "OUTSIDE", "FREE", "PRESCRIBED", "INTERIOR", "OPEN",
           "BEYOND"]
