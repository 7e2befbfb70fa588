"""Finite-difference stencils on ``[batch, channel, *space]`` tensors.

Every stencil is second-order accurate on the node/cell layout that :class:`~pdeaccel.grid.Grid`
defines for the boundary kind of each axis (homogeneous conditions; an inhomogeneous Dirichlet
value enters a stepper's right-hand side, see :func:`dirichlet_lift`).

MAC (staggered) layout, used for incompressible flow. Pressure lives at cell centres. Velocity
component ``d`` lives on the faces normal to axis ``d``: face ``k`` sits at ``x_d = k·h_d`` (the
*left* face of cell ``k``). On a periodic axis there are N faces (face N is face 0); on a bounded
axis N+1 (both walls included). A 2D vector potential ``a`` (3D: three edge components) lives on
cell corners/edges, so :func:`mac_curl` gives face velocities whose :func:`mac_divergence` is zero
up to round-off by construction.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .grid import Grid


def _check_axis(u: torch.Tensor, grid: Grid, name: str = "field", where: str = "stencil") -> None:
    """``u`` must be ``[batch, channel, *grid.shape]``: a field of another grid is an error, never
    silently differenced with this grid's spacing."""
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(u).__name__}.")
    if u.dim() != grid.ndim + 2:
        raise ValueError(
            f"{where}: expected {name} as a [batch, channel, *space] tensor with {grid.ndim} space axes, got shape "
            f"{list(u.shape)}"
        )
    if tuple(u.shape[2:]) != grid.shape:
        raise ValueError(
            f"{where}: {name} has space shape {tuple(u.shape[2:])}, but the grid has shape {grid.shape}; "
            "a field of another grid cannot be differenced with this grid's spacing."
        )


def pad_axis(u: torch.Tensor, axis: int, grid: Grid, *, normal: bool = False) -> torch.Tensor:
    """Pad one spatial axis by one ghost layer on each side according to its boundary kind.

    ``normal=True`` pads the component of a vector field normal to this axis. It matters only on
    a neumann (zero-flux) axis: a scalar is mirrored (ghost = edge value, zero normal derivative),
    a normal velocity is mirrored with opposite sign (ghost = −edge value, zero flux through the
    wall, which sits halfway between the edge cell and its ghost).
    """
    dim = axis + 2
    kind = grid.boundary[axis]
    first, last = u.narrow(dim, 0, 1), u.narrow(dim, u.shape[dim] - 1, 1)
    if kind == "periodic":
        return torch.cat([last, u, first], dim=dim)
    if kind == "dirichlet":
        zero = torch.zeros_like(first)
        return torch.cat([zero, u, zero], dim=dim)
    if normal:
        return torch.cat([-first, u, -last], dim=dim)
    return torch.cat([first, u, last], dim=dim)


def _neighbours(u: torch.Tensor, axis: int, grid: Grid, *, normal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(u[i-1], u[i+1]) along ``axis`` with the grid's ghost values (see :func:`pad_axis`)."""
    dim = axis + 2
    n = u.shape[dim]
    if grid.boundary[axis] == "periodic":
        # roll is one kernel; cheaper than cat + narrow on the hot path of the iterative solvers
        return torch.roll(u, 1, dims=dim), torch.roll(u, -1, dims=dim)
    padded = pad_axis(u, axis, grid, normal=normal)
    return padded.narrow(dim, 0, n), padded.narrow(dim, 2, n)


def laplacian(u: torch.Tensor, grid: Grid, *, scale: float = 1.0) -> torch.Tensor:
    """Second-order (2d+1)-point Laplacian ``scale · Σ_d (u[i-1] - 2u[i] + u[i+1]) / h_d²``.

    Ghost values as in :func:`pad_axis`: periodic wrap, zero (dirichlet), mirrored (neumann).
    ``scale`` is folded into the stencil weights: ``laplacian(u, g, scale=-1.0)`` is ``-Δu``
    (the Poisson matvec) without the extra pass and allocation of ``-laplacian(u, g)``.

    Three formulations of the same stencil, picked by context: in-place updates of one output
    tensor through shifted views (eager, fastest), the same wrapped in an autograd function whose
    backward is the stencil itself (the matrix is symmetric for every boundary kind; recording the
    in-place view updates instead costs a copy of the output per update in backward), and a
    shifted-sum expression under ``torch.compile``, which fuses it into one loop (the compiler
    turns in-place updates of views into a chain of masked copies).
    """
    _check_axis(u, grid, "u", "laplacian")
    if torch.compiler.is_compiling():
        return _laplacian_shifted(u, grid, scale)
    if torch.is_grad_enabled() and u.requires_grad and isinstance(scale, (int, float)):
        return _SymmetricStencil.apply(u, grid, float(scale))
    return _laplacian_views(u, grid, scale)


def _laplacian_views(u: torch.Tensor, grid: Grid, scale: float) -> torch.Tensor:
    inv_h2 = [scale / (h * h) for h in grid.spacing]
    # One output tensor updated through shifted views: this is the matvec of every Poisson and
    # heat solve, and each extra full-size temporary costs as much as the arithmetic (CPU memory
    # traffic and page faults). The in-place adds on views of a fresh tensor are autograd-safe.
    out = u * (-2.0 * sum(inv_h2))
    for axis, c in enumerate(inv_h2):
        dim, n = axis + 2, u.shape[axis + 2]
        if n > 1:
            out.narrow(dim, 1, n - 1).add_(u.narrow(dim, 0, n - 1), alpha=c)
            out.narrow(dim, 0, n - 1).add_(u.narrow(dim, 1, n - 1), alpha=c)
        kind = grid.boundary[axis]
        if kind == "periodic":
            out.narrow(dim, 0, 1).add_(u.narrow(dim, n - 1, 1), alpha=c)
            out.narrow(dim, n - 1, 1).add_(u.narrow(dim, 0, 1), alpha=c)
        elif kind == "neumann":
            out.narrow(dim, 0, 1).add_(u.narrow(dim, 0, 1), alpha=c)
            out.narrow(dim, n - 1, 1).add_(u.narrow(dim, n - 1, 1), alpha=c)
    return out


def _laplacian_shifted(u: torch.Tensor, grid: Grid, scale) -> torch.Tensor:
    """The stencil as one expression of shifted copies (ghosts by :func:`_neighbours`): what
    ``torch.compile`` fuses into a single pass."""
    inv_h2 = [scale / (h * h) for h in grid.spacing]
    out = u * (-2.0 * sum(inv_h2))
    for axis, c in enumerate(inv_h2):
        left, right = _neighbours(u, axis, grid)
        out = out + c * (left + right)
    return out


class _SymmetricStencil(torch.autograd.Function):
    """:func:`laplacian` for recorded graphs: forward in place on views, backward = the stencil
    (symmetric), so neither direction records per-view copies. Supports double backward."""

    @staticmethod
    def forward(ctx, u, grid, scale):
        ctx.grid, ctx.scale = grid, scale
        return _laplacian_views(u, grid, scale)

    @staticmethod
    def backward(ctx, grad_out):
        return laplacian(grad_out, ctx.grid, scale=ctx.scale), None, None


def laplacian_diagonal(grid: Grid, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Diagonal of :func:`laplacian` as a ``grid.shape`` tensor (Neumann ends are -1/h², not -2/h²)."""
    diag = torch.zeros(grid.shape, dtype=dtype)
    for axis, (n, h, kind) in enumerate(zip(grid.shape, grid.spacing, grid.boundary)):
        d = torch.full((n,), -2.0 / (h * h), dtype=dtype)
        if kind == "neumann":
            d[0] += 1.0 / (h * h)
            d[-1] += 1.0 / (h * h)
        if kind == "periodic" and n == 1:
            d[:] = 0.0
        shape = [1] * grid.ndim
        shape[axis] = n
        diag = diag + d.reshape(shape)
    return diag


def gradient(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Central-difference gradient: ``[B, C, *s] -> [B, C·d, *s]`` (channel-major, then axis)."""
    _check_axis(u, grid, "u", "gradient")
    parts = []
    for axis, h in enumerate(grid.spacing):
        left, right = _neighbours(u, axis, grid)
        parts.append((right - left) / (2.0 * h))
    return torch.stack(parts, dim=2).flatten(1, 2)


def divergence(v: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Central-difference divergence ``Σ_d (v_d[i+1] - v_d[i-1]) / 2h_d`` of a collocated vector
    field with ``grid.ndim`` channels.

    Ghost values of the normal component: periodic wrap, zero on a dirichlet axis (the wall node),
    sign-flipped mirror on a neumann axis (zero flux through the wall). With these ghosts the
    divergence is exactly minus the adjoint of :func:`gradient`, ``⟨div v, p⟩ = −⟨v, grad p⟩``.
    """
    _check_axis(v, grid, "v", "divergence")
    if v.shape[1] != grid.ndim:
        raise ValueError(f"divergence needs {grid.ndim} channels (one per axis), got {v.shape[1]}")
    out = torch.zeros_like(v[:, :1])
    for axis, h in enumerate(grid.spacing):
        left, right = _neighbours(v[:, axis : axis + 1], axis, grid, normal=True)
        out = out + (right - left) / (2.0 * h)
    return out


def upwind_derivative(u: torch.Tensor, velocity: torch.Tensor, axis: int, grid: Grid) -> torch.Tensor:
    """First-order upwind ``∂u/∂x_axis``: backward difference where velocity > 0, forward where < 0."""
    _check_axis(u, grid, "u", "upwind_derivative")
    _check_axis(velocity, grid, "velocity", "upwind_derivative")
    h = grid.spacing[axis]
    left, right = _neighbours(u, axis, grid)
    backward = (u - left) / h
    forward = (right - u) / h
    return torch.where(velocity > 0, backward, forward)


def upwind_advection(u: torch.Tensor, velocity: torch.Tensor, grid: Grid) -> torch.Tensor:
    """First-order upwind ``(v·∇)u`` for a collocated velocity with ``grid.ndim`` channels."""
    _check_axis(u, grid, "u", "upwind_advection")
    _check_axis(velocity, grid, "velocity", "upwind_advection")
    if velocity.shape[1] != grid.ndim:
        raise ValueError(f"velocity needs {grid.ndim} channels, got {velocity.shape[1]}")
    out = torch.zeros_like(u)
    for axis in range(grid.ndim):
        v = velocity[:, axis : axis + 1]
        out = out + v * upwind_derivative(u, v, axis, grid)
    return out


def dirichlet_lift(grid: Grid, values: Sequence[tuple[float, float]], dtype=torch.float64) -> torch.Tensor:
    """Contribution of inhomogeneous Dirichlet values to ``laplacian``: ``L u_full = L u + lift``.

    ``values[axis] = (value at x=0, value at x=L)``; returns a ``[1, 1, *grid.shape]`` tensor.
    """
    lift = torch.zeros((1, 1) + grid.shape, dtype=dtype)
    for axis, ((lo, hi), h, kind) in enumerate(zip(values, grid.spacing, grid.boundary)):
        if kind != "dirichlet":
            if lo or hi:
                raise ValueError(f"axis {axis} is {kind}, it takes no Dirichlet values")
            continue
        dim = axis + 2
        lift.narrow(dim, 0, 1).add_(lo / (h * h))
        lift.narrow(dim, grid.shape[axis] - 1, 1).add_(hi / (h * h))
    return lift


# --------------------------------------------------------------------------------------------
# MAC (staggered) layout
# --------------------------------------------------------------------------------------------


def _diff_forward(f: torch.Tensor, axis: int, grid: Grid) -> torch.Tensor:
    """``(f[k+1] - f[k]) / h``: same length on a periodic axis, one shorter on a bounded one."""
    dim = axis + 2
    h = mac_spacing(grid)[axis]
    if grid.boundary[axis] == "periodic":
        return (torch.roll(f, -1, dims=dim) - f) / h
    n = f.shape[dim]
    return (f.narrow(dim, 1, n - 1) - f.narrow(dim, 0, n - 1)) / h


def _diff_backward(f: torch.Tensor, axis: int, grid: Grid) -> torch.Tensor:
    """``(f[k] - f[k-1]) / h``: same length on a periodic axis, one shorter on a bounded one."""
    dim = axis + 2
    h = mac_spacing(grid)[axis]
    if grid.boundary[axis] == "periodic":
        return (f - torch.roll(f, 1, dims=dim)) / h
    n = f.shape[dim]
    return (f.narrow(dim, 1, n - 1) - f.narrow(dim, 0, n - 1)) / h


def mac_spacing(grid: Grid) -> tuple[float, ...]:
    """Cell width ``L/N`` per axis: a MAC grid is cell-based whatever the boundary kind."""
    return tuple(L / n for n, L in zip(grid.shape, grid.extent))


def mac_coordinates(grid: Grid, axis: int | None, origin: Sequence[float], dtype: torch.dtype,
                    device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """Coordinates (minus ``origin``) of the cell centres (``axis=None``) or of the faces normal to
    ``axis``, one tensor per coordinate."""
    h = mac_spacing(grid)
    shape = grid.shape if axis is None else mac_face_shape(grid, axis)
    axes = []
    for a, (n, ha) in enumerate(zip(shape, h)):
        offset = 0.0 if a == axis else 0.5
        axes.append((torch.arange(n, dtype=dtype, device=device) + offset) * ha - origin[a])
    return tuple(torch.meshgrid(*axes, indexing="ij"))


def shift(x: torch.Tensor, dim: int, offset: int, periodic: bool, fill: float | int = 0) -> torch.Tensor:
    """``y[…, i, …] = x[…, i + offset, …]`` along ``dim``; wraps if periodic, else ``fill``."""
    if offset == 0:
        return x
    if periodic:
        return torch.roll(x, -offset, dims=dim)
    n = x.shape[dim]
    k = min(abs(offset), n)
    pad_shape = list(x.shape)
    pad_shape[dim] = k
    pad = torch.full(pad_shape, fill, dtype=x.dtype, device=x.device)
    if offset > 0:
        return torch.cat([x.narrow(dim, k, n - k), pad], dim)
    return torch.cat([pad, x.narrow(dim, 0, n - k)], dim)


def face_neighbour_cells(cells: torch.Tensor, axis: int, periodic: bool,
                         outside: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two cells adjacent to every face normal to ``axis``: (cell k−1, cell k); ``outside``
    stands for the cells beyond a bounded axis."""
    dim = axis + 2
    if periodic:
        return torch.roll(cells, 1, dims=dim), cells
    pad_shape = list(cells.shape)
    pad_shape[dim] = 1
    pad = torch.full(pad_shape, outside, dtype=cells.dtype, device=cells.device)
    padded = torch.cat([pad, cells, pad], dim)
    n = cells.shape[dim]
    return padded.narrow(dim, 0, n + 1), padded.narrow(dim, 1, n + 1)


def mac_face_shape(grid: Grid, axis: int) -> tuple[int, ...]:
    """Shape of the face array normal to ``axis`` (N+1 along a bounded axis, N if periodic)."""
    return tuple(
        n + (1 if (a == axis and grid.boundary[a] != "periodic") else 0) for a, n in enumerate(grid.shape)
    )


def mac_potential_shape(grid: Grid, component: int | None = None) -> tuple[int, ...]:
    """Shape of the vector potential: 2D corners; 3D edges along ``component``."""
    extra = [0 if kind == "periodic" else 1 for kind in grid.boundary]
    if grid.ndim == 3:
        if component is None:
            raise ValueError("a 3D vector potential has three edge components; pass component=0,1,2")
        extra[component] = 0
    return tuple(n + e for n, e in zip(grid.shape, extra))


def mac_divergence(faces: Sequence[torch.Tensor], grid: Grid) -> torch.Tensor:
    """Cell-centred divergence ``Σ_d (u_d[k+1] - u_d[k]) / h_d`` of MAC face velocities."""
    if len(faces) != grid.ndim:
        raise ValueError(f"need {grid.ndim} face components, got {len(faces)}")
    out = None
    for axis, f in enumerate(faces):
        expected = mac_face_shape(grid, axis)
        if tuple(f.shape[2:]) != expected:
            raise ValueError(f"face component {axis} must have space shape {expected}, got {tuple(f.shape[2:])}")
        d = _diff_forward(f, axis, grid)
        out = d if out is None else out + d
    return out


def mac_gradient(p: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
    """Face-normal pressure gradient ``(p[k] - p[k-1]) / h``; on a bounded axis only interior faces
    are defined, so the wall faces are returned as zero (walls carry no pressure-driven flux)."""
    grid.check_field(p, "pressure")
    out = []
    for axis in range(grid.ndim):
        g = _diff_backward(p, axis, grid)
        if grid.boundary[axis] != "periodic":
            zero = torch.zeros_like(g.narrow(axis + 2, 0, 1))
            g = torch.cat([zero, g, zero], dim=axis + 2)
        out.append(g)
    return tuple(out)


def mac_curl(potential, grid: Grid) -> tuple[torch.Tensor, ...]:
    """Face velocities from a vector potential; their :func:`mac_divergence` vanishes identically.

    2D: ``potential`` is a ``[B, 1, *corner_shape]`` tensor ``a``; ``u_x = ∂a/∂y``, ``u_y = -∂a/∂x``.
    3D: ``potential`` is a sequence ``(A_x, A_y, A_z)`` of edge tensors; ``u = ∇ × A``.
    """
    if grid.ndim == 2:
        a = potential
        expected = mac_potential_shape(grid)
        if tuple(a.shape[2:]) != expected:
            raise ValueError(f"2D vector potential must have space shape {expected}, got {tuple(a.shape[2:])}")
        return (_diff_forward(a, 1, grid), -_diff_forward(a, 0, grid))
    if grid.ndim == 3:
        ax, ay, az = potential
        for c, comp in enumerate((ax, ay, az)):
            expected = mac_potential_shape(grid, c)
            if tuple(comp.shape[2:]) != expected:
                raise ValueError(f"3D potential component {c} must have space shape {expected}, got {tuple(comp.shape[2:])}")
        ux = _diff_forward(az, 1, grid) - _diff_forward(ay, 2, grid)
        uy = _diff_forward(ax, 2, grid) - _diff_forward(az, 0, grid)
        uz = _diff_forward(ay, 0, grid) - _diff_forward(ax, 1, grid)
        return (ux, uy, uz)
    raise ValueError("mac_curl is defined for 2D and 3D grids")
