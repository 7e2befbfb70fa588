"""The ``--compiled`` section of ``benchmarks/solvers.py`` (see its docstring).

Kept in its own file so the main benchmark stays readable; it is imported by ``solvers.py`` after
the thread and cache environment variables are set.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import numpy as np
import scipy.sparse.linalg as spla
import torch

from pdeaccel import Grid, LinearOperator, laplacian, solve
from pdeaccel.linalg import _compiled
from pdeaccel.physics import HeatStepper
from pdeaccel.stencils import laplacian_diagonal

DTYPE = torch.float64
SHAPES = [(30,), (32, 32), (64, 64), (32, 32, 32)]
BATCHES = [1, 8]
BUDGETS = [10, 50]
MODES = ("forward", "implicit")
# GMRES is left out: its traced cycle (restart = 10) took 90–200 s to compile here and failed at
# 1D (tests/test_compiled_solvers.py checks restart = 2)
OTHER_METHODS = ("jacobi", "bicgstab")
GMRES_RESTART = 10
#: what ``compile=True`` runs since issue 15 (results without this tag are of the while_loop version)
CHUNKED = "chunks of 16, 4, 1 iterations"


def _jax():
    try:
        import jax
        import jax.numpy as jnp
        from jax.scipy.sparse.linalg import cg as jcg
    except Exception as exc:  # noqa: BLE001 - optional dependency
        return None, f"JAX not installed ({type(exc).__name__}); `pip install \"jax[cpu]\"` adds the column"
    jax.config.update("jax_enable_x64", True)
    return (jax, jnp, jcg), None


def _poisson_op(grid: Grid) -> LinearOperator:
    # a new closure per call, as a stepper builds its operator at every training step
    return LinearOperator(lambda u: laplacian(u, grid, scale=-1.0), diagonal=-laplacian_diagonal(grid, DTYPE),
                          symmetric=True, shape=grid.shape)


def _jax_poisson(jnp, grid: Grid):
    """−Δ with zero Dirichlet ghosts on one sample (no batch/channel axes), as our stencil."""
    inv_h2 = [1.0 / (h * h) for h in grid.spacing]

    def matvec(u):
        out = u * (2.0 * sum(inv_h2))
        padded = jnp.pad(u, 1)
        for axis, c in enumerate(inv_h2):
            n = u.shape[axis]
            lo = [slice(1, -1)] * u.ndim
            hi = [slice(1, -1)] * u.ndim
            lo[axis], hi[axis] = slice(0, n), slice(2, n + 2)
            out = out - c * (padded[tuple(lo)] + padded[tuple(hi)])
        return out

    return matvec


def _timed(cases: dict, repeats: int) -> dict:
    """Round-robin medians (first call of each case excluded: compile / warm-up)."""
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for key, run in cases.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return times


def build_cases(shape, batch: int, jax_mods, matrix) -> tuple[dict, dict]:
    """Closures ``run()`` for every (solver, mode, K), and the first-call (compile) times."""
    grid = Grid(shape, extent=1.0, boundary="dirichlet")
    gen = torch.Generator().manual_seed(0)
    b = torch.randn((batch, 1) + shape, dtype=DTYPE, generator=gen)
    w = torch.randn((batch, 1) + shape, dtype=DTYPE, generator=gen)
    b_np = [bi.flatten().numpy() for bi in b]
    w_np = [wi.flatten().numpy() for wi in w]
    cases: dict[tuple, Callable] = {}
    first: dict[str, float] = {}

    def ours(flag, mode, K):
        kw = dict(method="cg", max_iters=K, rtol=0.0, atol=0.0, compile=flag)

        def run():
            if mode == "forward":
                with torch.no_grad():
                    solve(_poisson_op(grid), b, **kw)
                return
            bl = b.clone().requires_grad_(True)
            x = solve(_poisson_op(grid), bl, grad="implicit", **kw).solution
            torch.autograd.grad((x * w).sum(), bl)

        return run

    def theirs(mode, K):
        def run():
            for bi, wi in zip(b_np, w_np):
                spla.cg(matrix, bi, rtol=0.0, atol=0.0, maxiter=K)
                if mode == "implicit":  # the adjoint solve of an implicit gradient (A symmetric)
                    spla.cg(matrix, wi, rtol=0.0, atol=0.0, maxiter=K)

        return run

    for mode in MODES:
        for K in BUDGETS:
            cases[("eager", mode, K)] = ours(False, mode, K)
            cases[("compiled", mode, K)] = ours(True, mode, K)
            cases[("scipy", mode, K)] = theirs(mode, K)
    # our compile: once per shape (the forward and the adjoint solve share the graph)
    t0 = time.perf_counter()
    before = _compiled.compile_stats().compiles
    cases[("compiled", "implicit", BUDGETS[0])]()
    first["ours"] = time.perf_counter() - t0
    first["ours_graphs"] = _compiled.compile_stats().compiles - before

    if jax_mods is not None:
        jax, jnp, jcg = jax_mods
        A = _jax_poisson(jnp, grid)
        bj = jnp.asarray(b[:, 0].numpy())
        wj = jnp.asarray(w[:, 0].numpy())
        for mode in MODES:
            for K in BUDGETS:
                def solve_one(rhs, K=K):
                    return jcg(A, rhs, tol=0.0, atol=0.0, maxiter=K)[0]

                if mode == "forward":
                    fn = jax.jit(jax.vmap(solve_one))

                    def run(fn=fn):
                        fn(bj).block_until_ready()
                else:
                    # jax.scipy's cg differentiates implicitly (custom_linear_solve: a transpose solve)
                    fn = jax.jit(jax.grad(lambda rhs, solve_one=solve_one: jnp.sum(jax.vmap(solve_one)(rhs) * wj)))

                    def run(fn=fn):
                        fn(bj).block_until_ready()
                t0 = time.perf_counter()
                run()  # trace + XLA compile: the PRDP reference pays this at every new K (maxiter is static)
                first[f"jax {mode} K={K}"] = time.perf_counter() - t0
                cases[("jax", mode, K)] = run
    return cases, first


def other_methods(shape, batch: int, repeats: int, K: int = 50) -> list[dict]:
    grid = Grid(shape, extent=1.0, boundary="dirichlet")
    b = torch.randn((batch, 1) + shape, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    out = []
    for method in OTHER_METHODS:
        kw = dict(method=method, rtol=0.0, atol=0.0)
        kw.update(dict(max_iters=K // GMRES_RESTART, restart=GMRES_RESTART) if method == "gmres" else dict(max_iters=K))
        if method == "jacobi":  # converges slowly on −Δ, but the cost per iteration is what is measured
            kw["omega"] = 2.0 / 3.0

        def run(flag, kw=kw):
            with torch.no_grad():
                return solve(_poisson_op(grid), b, compile=flag, **kw).solution

        t0 = time.perf_counter()
        compiled_x = run(True)
        compile_s = time.perf_counter() - t0
        eager_x = run(False)
        err = float((compiled_x - eager_x).abs().max() / eager_x.abs().max())
        times = _timed({"eager": lambda: run(False), "compiled": lambda: run(True)}, repeats)
        med = {k: statistics.median(v) / K * 1e6 for k, v in times.items()}
        out.append({"problem": "×".join(map(str, shape)), "batch": batch, "method": method, "K": K,
                    "eager_us_per_iteration": med["eager"], "compiled_us_per_iteration": med["compiled"],
                    "compile_s": compile_s, "max_relative_difference": err})
        print(f"  {method} {out[-1]['problem']} batch {batch}: eager {med['eager']:.0f} µs/it, compiled "
              f"{med['compiled']:.0f} µs/it, compile {compile_s:.1f} s", flush=True)
    return out


def heat2d_break_even(repeats: int) -> dict:
    """Cost of the solves of one heat-2d training step (Jacobi, 30², float32, batch 25, warm start
    x0 = the network's output, implicit gradient), eager against compiled, and the epochs after
    which the compile time is repaid (8 steps per epoch at the cpu size)."""
    grid = Grid((30, 30), extent=1.0, boundary="dirichlet")
    heat = HeatStepper(grid, nu=0.001, dt=1.0)
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(25, 1, 30, 30, generator=gen)
    w = torch.randn(25, 1, 30, 30, generator=gen)
    from pdeaccel import SolverConfig

    def step(flag, K):
        solver = SolverConfig(method="jacobi", max_iters=K, rtol=0.0, grad="implicit", compile=flag)

        def run():
            x = u.clone().requires_grad_(True)
            torch.autograd.grad((heat(x, solver) * w).sum(), x)

        return run

    t0 = time.perf_counter()
    step(True, 10)()
    compile_s = time.perf_counter() - t0
    cases = {(flag, K): step(flag, K) for K in (10, 17) for flag in (False, True)}
    for run in cases.values():
        run()
    times = _timed(cases, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for K in (10, 17):
        saving = med[(False, K)] - med[(True, K)]
        steps = compile_s / saving if saving > 0 else math.inf
        rows.append({"K": K, "eager_ms_per_step": med[(False, K)] * 1e3, "compiled_ms_per_step": med[(True, K)] * 1e3,
                     "saving_ms_per_step": saving * 1e3, "break_even_steps": steps, "break_even_epochs": steps / 8})
    return {"compile_s": compile_s, "rows": rows, "steps_per_epoch": 8, "epochs": 70}


def run_compiled_benchmark(args, scipy_poisson) -> dict:
    torch.set_num_threads(args.threads)
    jax_mods, jax_note = _jax()
    repeats = 9 if args.quick else 11
    shapes = SHAPES[:2] if args.quick else SHAPES
    started = time.perf_counter()
    rows, compile_rows = [], []
    for shape in shapes:
        grid = Grid(shape, extent=1.0, boundary="dirichlet")
        matrix = scipy_poisson(grid)
        for batch in BATCHES:
            name = "×".join(map(str, shape))
            cases, first = build_cases(shape, batch, jax_mods, matrix)
            for run in cases.values():  # warm-up (everything is compiled by now)
                run()
            before = _compiled.compile_stats().compiles
            times = _timed(cases, repeats)  # K alternates 10, 50, 10, ... for every solver
            recompiles = _compiled.compile_stats().compiles - before
            for (solver, mode, K), ts in times.items():
                rows.append({"problem": name, "unknowns": math.prod(shape), "batch": batch, "solver": solver,
                             "mode": mode, "K": K, "median_s": statistics.median(ts),
                             "us_per_iteration": statistics.median(ts) / K * 1e6, "times_s": ts})
            compile_rows.append({"problem": name, "batch": batch, "ours_compile_s": first["ours"],
                                 "ours_graphs": first["ours_graphs"], "recompiles_while_K_alternates": recompiles,
                                 **{k: v for k, v in first.items() if k.startswith("jax")}})
            cg = {r["solver"]: r["us_per_iteration"] for r in rows
                  if r["problem"] == name and r["batch"] == batch and r["mode"] == "forward" and r["K"] == 50}
            print(f"{name} batch {batch}: CG forward K=50 µs/it: " + ", ".join(f"{k} {v:.0f}" for k, v in cg.items())
                  + f"; compile {first['ours']:.1f} s, recompiles {recompiles} "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    others = []
    for shape, batch in (((30,), 1), ((64, 64), 8)):
        others += other_methods(shape, batch, repeats)
    heat = heat2d_break_even(repeats)
    print(f"heat-2d break-even: compile {heat['compile_s']:.1f} s; " + "; ".join(
        f"K={r['K']}: {r['eager_ms_per_step']:.2f} → {r['compiled_ms_per_step']:.2f} ms/step, "
        f"{r['break_even_epochs']:.0f} epochs" for r in heat["rows"]), flush=True)
    return {"implementation": CHUNKED, "settings": {"shapes": [list(s) for s in shapes], "batches": BATCHES, "budgets": BUDGETS,
                         "repeats": repeats, "dtype": "float64", "threads": args.threads,
                         "jax": None if jax_mods is None else jax_mods[0].__version__, "jax_note": jax_note},
            "rows": rows, "compile": compile_rows, "other_methods": others, "heat2d": heat,
            "stats": _compiled.compile_stats().__dict__, "wall_time_s": time.perf_counter() - started,
            "load_average_at_start": list(__import__("os").getloadavg())}


def _row(rows, problem, batch, solver, mode, K):
    for r in rows:
        if (r["problem"], r["batch"], r["solver"], r["mode"], r["K"]) == (problem, batch, solver, mode, K):
            return r
    return None


def compiled_targets(c: dict) -> list[dict]:
    out = []
    rows = c["rows"]
    if c["settings"]["jax"] is not None:
        for comp in c["compile"]:
            for mode in MODES:
                for K in c["settings"]["budgets"]:
                    ours = _row(rows, comp["problem"], comp["batch"], "compiled", mode, K)
                    jx = _row(rows, comp["problem"], comp["batch"], "jax", mode, K)
                    ratio = ours["us_per_iteration"] / jx["us_per_iteration"]
                    out.append({"target": "compiled CG per iteration no slower than jax.scipy's CG",
                                "case": f"{comp['problem']} batch {comp['batch']} {mode} K={K}", "value": ratio,
                                "pass": ratio <= 1.0,
                                "detail": f"{ours['us_per_iteration']:.1f} vs {jx['us_per_iteration']:.1f} µs (×{ratio:.2f})"})
    total = sum(comp["recompiles_while_K_alternates"] for comp in c["compile"])
    out.append({"target": "zero recompilations when only K changes", "case": "every problem and batch",
                "value": total, "pass": total == 0, "detail": f"{total} recompilations over all timed repeats"})
    return out


def compiled_markdown(c: dict) -> list[str]:
    s = c["settings"]
    chunked = c.get("implementation") == CHUNKED
    rows = c["rows"]
    lines = [
        "## Compiled path (`--compiled`)",
        "",
        "`.venv/bin/python benchmarks/solvers.py --compiled` — CG on the small problems of the PRDP experiments, "
        f"Poisson −Δ (Dirichlet, {s['dtype']}), batch {' and '.join(map(str, s['batches']))}, K = "
        f"{' and '.join(map(str, s['budgets']))} (rtol = atol = 0: exactly K iterations), all solvers timed "
        f"round-robin in one process, {s['repeats']} repeats, medians, one thread (torch, BLAS and XLA); "
        f"load average at start {', '.join(f'{x:.1f}' for x in c['load_average_at_start'])} on the shared 2-core "
        f"machine. Whole section: {c['wall_time_s']:.0f} s.",
        "",
        ("- **eager**: `solve(..., compile=False)`; **compiled**: `solve(..., compile=True)` — chunks of 16, 4 and 1 "
         "unrolled iterations, each one `torch.compile`d graph, composed greedily to reach K (K = 50: 16+16+16+1+1), the "
         "loop over chunks in Python (so K changes never compile); each call builds a new operator closure, as a "
         "stepper does every step." if c.get("implementation") == CHUNKED else
         "- **eager**: `solve(..., compile=False)`; **compiled**: `solve(..., compile=True)` as implemented when these "
         "numbers were taken (before issue 15's chunks): the whole loop is one `torch.compile`d `while_loop` whose trip "
         "count K is a tensor; each call builds a new operator closure, as a stepper does every step."),
        "- **scipy**: `scipy.sparse.linalg.cg` on the assembled CSR matrix, sample after sample; for implicit "
        "forward+backward it solves twice (forward and the adjoint solve an implicit gradient needs).",
        "- **jax**: `jax.scipy.sparse.linalg.cg` under `jax.jit`, vmapped over the batch, x64, the same stencil "
        "written with `jnp.pad`; implicit = `jax.grad` through it (`custom_linear_solve`: one transpose solve). "
        "K (`maxiter`) is static, as in the PRDP reference code, so every new K recompiles."
        + ("" if s["jax"] is None else f" JAX {s['jax']}.")
        + ("" if s["jax_note"] is None else f" **Skipped:** {s['jax_note']}."),
        "- implicit forward+backward µs/it = the call's median / the forward K (it runs 2K iterations).",
        "",
        "### Targets",
        "",
    ]
    for t in compiled_targets(c):
        lines.append(f"- **{'PASS' if t['pass'] else 'FAIL'}** — {t['target']}: {t['case']}: {t['detail']}")
    lines += ["", "### CG time per iteration (µs)", "",
              "| problem | batch | mode | K | eager | compiled | scipy | jax | compiled / eager | compiled / jax |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for comp in c["compile"]:
        for mode in MODES:
            for K in s["budgets"]:
                get = {sv: _row(rows, comp["problem"], comp["batch"], sv, mode, K) for sv in ("eager", "compiled", "scipy", "jax")}
                cell = {k: ("–" if v is None else f"{v['us_per_iteration']:,.1f}") for k, v in get.items()}
                r_e = get["compiled"]["us_per_iteration"] / get["eager"]["us_per_iteration"]
                r_j = "–" if get["jax"] is None else f"{get['compiled']['us_per_iteration'] / get['jax']['us_per_iteration']:.2f}"
                lines.append(f"| {comp['problem']} | {comp['batch']} | {mode} | {K} | {cell['eager']} | {cell['compiled']} | "
                             f"{cell['scipy']} | {cell['jax']} | {r_e:.2f} | {r_j} |")
    lines += ["", "### Compile times and recompilations", "",
              "Ours: the first compiled call of a shape (tracing, code generation, C++ compilation with a cold "
              + ("inductor cache of its three chunk graphs, and the run itself); the forward and the adjoint solve share "
                 "those graphs" if chunked else "inductor cache, and the run itself); the forward and the adjoint solve "
                 "share that graph")
              + ", and the timed repeats, with K alternating between the budgets, recompile nothing. JAX: the first call at "
              "each K, which the PRDP reference code pays again whenever K changes.", "",
              "| problem | batch | ours: compile s | ours: graphs | recompiles while K alternates | "
              + " | ".join(f"jax {m} K={K}: s" for m in MODES for K in s["budgets"]) + " |",
              "|---|---|---|---|---|" + "---|" * (len(MODES) * len(s["budgets"]))]
    for comp in c["compile"]:
        jx = " | ".join(f"{comp[f'jax {m} K={K}']:.2f}" if f"jax {m} K={K}" in comp else "–"
                        for m in MODES for K in s["budgets"])
        lines.append(f"| {comp['problem']} | {comp['batch']} | {comp['ours_compile_s']:.1f} | {comp['ours_graphs']} | "
                     f"{comp['recompiles_while_K_alternates']} | {jx} |")
    lines += ["", "### The other methods (forward, K = 50)", "",
              "GMRES is not in this table: its traced restart cycle (m = 10) took 90–200 s to compile here and failed "
              "at 1D (the solve fell back to eager with a warning); the compiled GMRES is tested at m = 2.", "",
              "| problem | batch | method | eager µs/it | compiled µs/it | compiled / eager | compile s | max relative difference |",
              "|---|---|---|---|---|---|---|---|"]
    for o in c["other_methods"]:
        lines.append(f"| {o['problem']} | {o['batch']} | {o['method']} | {o['eager_us_per_iteration']:,.1f} | "
                     f"{o['compiled_us_per_iteration']:,.1f} | {o['compiled_us_per_iteration'] / o['eager_us_per_iteration']:.2f} | "
                     f"{o['compile_s']:.1f} | {o['max_relative_difference']:.1e} |")
    h = c["heat2d"]
    lines += ["", "### Is the compile time repaid in a heat-2d PRDP run?", "",
              f"The solves of one heat-2d training step at the cpu size (Jacobi, 30², float32, batch 25, warm start, "
              f"implicit gradient: forward and adjoint solve), eager against compiled; compile time "
              f"{h['compile_s']:.1f} s ({'three chunk graphs, forward and adjoint share them' if chunked else 'one graph, forward and adjoint share it'}; a fresh inductor cache, but inductor "
              f"already warmed up by this process's earlier compiles: the first compile of a fresh process took "
              f"{c['compile'][0]['ours_compile_s']:.0f} s above). A run has {h['epochs']} epochs of "
              f"{h['steps_per_epoch']} steps; K ramps from 2 to ≈ 17 under PRDP. heat-2d itself differentiates "
              "*unrolled* (`solver.grad=unrolled`), which the compiled path does not cover (a compiled unrolled loop "
              "was tried: 25 s to compile and 2× slower than eager), so this is for `solver.grad=implicit`; with the "
              "experiment's default nothing is compiled and `compile=\"auto\"` never compiles. What the default run "
              "gained instead is the laplacian's symmetric autograd function (no per-view copies in backward): "
              "−20% per training step at K = 4 and 20 (measured side by side, 12 interleaved epochs).", "",
              "| K | eager ms/step | compiled ms/step | saved ms/step | break-even steps | break-even epochs |",
              "|---|---|---|---|---|---|"]
    for r in h["rows"]:
        lines.append(f"| {r['K']} | {r['eager_ms_per_step']:.2f} | {r['compiled_ms_per_step']:.2f} | "
                     f"{r['saving_ms_per_step']:.2f} | {r['break_even_steps']:,.0f} | {r['break_even_epochs']:,.0f} |")
    repaid = all(r["break_even_epochs"] <= h["epochs"] for r in h["rows"])
    lines += ["", ("So a 70-epoch heat-2d run repays" if repaid else "So a 70-epoch heat-2d run does not repay")
              + " a compile of this size (break-even after "
              + " and ".join(f"{r['break_even_epochs']:.0f}" for r in h["rows"]) + " epochs at K = "
              + " and ".join(str(r["K"]) for r in h["rows"]) + "); a run with a warm on-disk inductor "
              "cache compiles faster (heat-1d's three Jacobi chunks: 193 s cold, 19–64 s warm, `epoch_cost.md`). "
              "`compile=\"auto\"` waits until the iterations run on "
              "an operator and shape would have repaid the compile."]
    lines.append("")
    return lines
