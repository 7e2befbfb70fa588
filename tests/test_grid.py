"""Grid layout: hand-checked positions and spacings per boundary kind, and input validation."""

import pytest
import torch

from pdeaccel.grid import BOUNDARY_KINDS, Grid


def test_periodic_nodes_start_at_zero_and_skip_the_duplicate_end():
    g = Grid(4, extent=2.0, boundary="periodic")
    assert g.spacing == (0.5,)
    assert g.axis_coordinates(0).tolist() == [0.0, 0.5, 1.0, 1.5]


def test_dirichlet_nodes_are_the_interior_ones():
    # 3 unknowns on [0, 1]: the boundary nodes 0 and 1 are not unknowns, h = 1/4
    g = Grid(3, extent=1.0, boundary="dirichlet")
    assert g.spacing == (0.25,)
    assert g.axis_coordinates(0).tolist() == [0.25, 0.5, 0.75]


def test_neumann_unknowns_are_cell_centres():
    g = Grid(4, extent=1.0, boundary="neumann")
    assert g.spacing == (0.25,)
    assert g.axis_coordinates(0).tolist() == [0.125, 0.375, 0.625, 0.875]


def test_mixed_boundaries_per_axis_and_meshgrid_layout():
    g = Grid((2, 3), extent=(1.0, 3.0), boundary=("dirichlet", "periodic"))
    assert g.ndim == 2 and g.numel == 6
    assert g.spacing == pytest.approx((1.0 / 3.0, 1.0))
    X, Y = g.coordinates()
    assert X.shape == (2, 3) and Y.shape == (2, 3)
    # indexing="ij": the first axis varies along rows
    assert torch.allclose(X, torch.tensor([[1 / 3] * 3, [2 / 3] * 3], dtype=torch.float64))
    assert Y.tolist() == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]


def test_scalar_arguments_apply_to_every_axis_and_dtype_is_respected():
    g = Grid((2, 2, 2), extent=2.0, boundary="neumann")
    assert g.extent == (2.0, 2.0, 2.0)
    assert g.boundary == ("neumann",) * 3
    assert g.spacing == (1.0, 1.0, 1.0)
    coords = g.coordinates(dtype=torch.float32)
    assert len(coords) == 3 and all(c.dtype == torch.float32 for c in coords)
    assert coords[2][0, 0].tolist() == [0.5, 1.5]


def test_grid_is_hashable_and_compares_by_value():
    assert Grid(4, 1.0, "periodic") == Grid((4,), (1.0,), ("periodic",))
    assert len({Grid(4), Grid(4), Grid(5)}) == 2


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        (dict(shape=8, boundary="robin"), ["Unknown boundary kind", "'robin'", *BOUNDARY_KINDS]),
        (dict(shape=(4, 4), boundary=("periodic",)), ["boundary", "one entry per axis"]),
        (dict(shape=(1, 2, 3, 4)), ["1 to 3 axes"]),
        (dict(shape=()), ["1 to 3 axes"]),
        (dict(shape=(4, 0)), ["positive", "(4, 0)"]),
        (dict(shape=4, extent=-1.0), ["extent", "positive"]),
        (dict(shape=4, extent=float("inf")), ["extent", "finite"]),
        (dict(shape=(4, 4), extent=(1.0, 2.0, 3.0)), ["extent", "one entry per axis"]),
    ],
)
def test_bad_grid_arguments_are_named_in_the_error(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        Grid(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_check_field_names_the_expected_layout():
    g = Grid((4, 5))
    g.check_field(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\[batch, channel, 4, 5\].*\[4, 5\]"):
        g.check_field(torch.zeros(4, 5), "u")
    with pytest.raises(ValueError, match="velocity must have shape"):
        g.check_field(torch.zeros(1, 1, 5, 4), "velocity")
    with pytest.raises(TypeError, match="torch.Tensor.*list"):
        g.check_field([[0.0]], "u")
