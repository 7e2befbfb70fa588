"""The counting monitor (linalg.IterationLog): what simulations report and what K_ε is measured with."""

import torch

from pdeaccel import SolverConfig
from pdeaccel.linalg import IterationLog, LinearOperator


def _spd(n=12, batch=3):
    diag = torch.linspace(1.0, 30.0, n, dtype=torch.float64)
    op = LinearOperator(lambda x: diag * x, diagonal=diag, symmetric=True)
    return op, torch.ones(batch, n, dtype=torch.float64) * torch.arange(1, batch + 1, dtype=torch.float64)[:, None]


def test_counts_per_solve_per_step_and_per_method_and_the_misses():
    op, b = _spd()
    log = IterationLog()
    SolverConfig(method="cg", max_iters=3, rtol=0.0, monitor=log).solve(op, b)    # 3 iterations, all samples miss
    SolverConfig(method="cg", max_iters=5, rtol=0.0, monitor=log).solve(op, b)    # 5
    first = log.end_step()
    assert first == {"cg": 8} and log.last_unconverged == {"cg": 6} and log.max_per_solve == 5
    SolverConfig(method="jacobi", max_iters=2, rtol=0.0, monitor=log).solve(op, b)
    assert log.end_step() == {"jacobi": 2}
    summary = log.summary()
    assert summary["cg"] == {"mean": 4.0, "max": 8, "total": 8, "unit": "iterations"}  # one step without cg counts 0
    assert summary["jacobi"]["total"] == 2 and log.max_per_solve == 5


def test_the_largest_solve_is_k_epsilon():
    from pdeaccel.experiments.registry import measure_k_converged

    op, b = _spd()
    counts = []
    reference = SolverConfig(method="cg", rtol=1e-10, monitor=lambda d, m, it: counts.append(int(it.max())))
    reference.solve(op, b)
    k = measure_k_converged(lambda states, solver: solver.solve(op, states).solution, b, SolverConfig(method="cg"), 1e-10)
    assert k == counts[0] > 1
