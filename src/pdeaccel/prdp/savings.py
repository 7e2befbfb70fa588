"""PRDP's savings against converged training: one vocabulary, one report, one table writer.

Every savings number has one key, used alike by :func:`savings_report`, the run directories'
``compare.json``, the benchmarks' result files and the experiments' ``paper`` rows:
``prdp_*``/``conv_*`` for a quantity of each arm, ``*_savings`` for ``1 − PRDP/converged``.
:data:`QUANTITIES` lists them with their labels; :func:`savings_table` writes any of them as a
markdown table, per report, per seed or against the paper.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .._checks import integer
from ._checks import check_metric
from .ledger import IterationLedger, _as_ledger

__all__ = ["QUANTITIES", "REPORT_KEYS", "LEGACY_NAMES", "savings_report", "savings_table",
           "format_savings_markdown", "in_current_names"]

#: The savings vocabulary: key -> (label, format). Formats: ``int`` (a count), ``pct`` (a fraction
#: shown in percent), ``sec`` (seconds), ``sci`` (a metric), ``ratio`` and ``text``.
QUANTITIES: dict[str, tuple[str, str]] = {
    "net": ("network", "text"),
    "k_converged": ("K_ε (converged budget)", "int"),
    "epochs": ("epochs E", "int"),
    "epochs_converged": ("epochs E, converged", "int"),
    "k_final": ("K_final", "int"),
    "sum_k": ("Σ K_e", "int"),
    "prdp_nominal_cost": ("nominal cost PRDP Σ K_e·s_e", "int"),
    "conv_nominal_cost": ("nominal cost converged K_ε·Σ s_e", "int"),
    "ic": ("IC (incomplete convergence)", "pct"),
    "pr": ("PR (progressive refinement)", "pct"),
    "total": ("total saving, nominal Σ K_e", "pct"),
    "prdp_forward_iters": ("forward iterations PRDP", "int"),
    "conv_forward_iters": ("forward iterations converged", "int"),
    "prdp_backward_iters": ("backward iterations PRDP", "int"),
    "conv_backward_iters": ("backward iterations converged", "int"),
    "prdp_iters": ("iterations PRDP (fwd + bwd)", "int"),
    "conv_iters": ("iterations converged (fwd + bwd)", "int"),
    "measured_forward_savings": ("saving, measured forward iterations", "pct"),
    "measured_backward_savings": ("saving, measured backward iterations", "pct"),
    "measured_iteration_savings": ("saving, measured iterations (fwd + bwd)", "pct"),
    "conv_train_seconds": ("train time converged [s]", "sec"),
    "prdp_train_seconds": ("train time PRDP [s]", "sec"),
    "wall_train_savings": ("saving, train wall clock", "pct"),
    "wall_train_savings_robust": ("saving, train wall clock (burst-filtered)", "pct"),
    "conv_seconds_with_validation": ("time incl. validation converged [s]", "sec"),
    "prdp_seconds_with_validation": ("time incl. validation PRDP [s]", "sec"),
    "wall_total_savings": ("saving, wall clock incl. validation", "pct"),
    "conv_final": ("final metric converged", "sci"),
    "prdp_final": ("final metric PRDP", "sci"),
    "final_metric_ratio": ("final metric PRDP / converged", "ratio"),
    "prdp_refinements": ("refinements", "int"),
    "picard_converged": ("Picard budget P_ε", "int"),
    "picard_final": ("Picard budget P_final", "int"),
    "picard_total": ("saving, Picard iterations", "pct"),
}

#: The rows of one report's table (:func:`format_savings_markdown`).
REPORT_KEYS = ("k_converged", "epochs", "k_final", "ic", "pr", "total", "measured_iteration_savings",
               "conv_train_seconds", "prdp_train_seconds", "wall_train_savings", "wall_total_savings",
               "conv_final", "prdp_final", "final_metric_ratio")

#: Names that results stored before the vocabulary was unified still carry, and their keys now.
LEGACY_NAMES = {"k_eps": "k_converged", "wall_conv_s": "conv_train_seconds", "wall_prdp_s": "prdp_train_seconds"}


def in_current_names(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored savings or paper row with :data:`LEGACY_NAMES` renamed to today's keys."""
    return {LEGACY_NAMES.get(key, key): value for key, value in row.items()}


def _saving(ours: float, theirs: float) -> float | None:
    return None if theirs == 0 else 1.0 - ours / theirs


def _weights(ledger: IterationLedger, name: str) -> tuple[list[int], str]:
    steps = [int(e["steps"]) for e in ledger.epochs]
    if all(s > 0 for s in steps):
        return steps, "steps"
    if all(s == 0 for s in steps):
        return [1] * len(steps), "epochs"
    raise ValueError(f"{name}: some epochs counted optimiser steps and some did not ({steps}); "
                     "call count_step() in every epoch or in none.")


def savings_report(prdp: IterationLedger | dict, converged: IterationLedger | dict, k_converged: int,
                   prdp_final_metric: float, converged_final_metric: float) -> dict:
    """PRDP's savings against converged training, nominal (the paper's) and measured.

    Nominal, with K_e the budget of PRDP epoch e and s_e its optimiser steps (1 per epoch when no
    steps were counted — the paper's E):

    * C_conv = K_ε · Σ s_e (converged run), C_PRDP = Σ K_e·s_e
    * total = 1 − C_PRDP / C_conv  (= 1 − Σ K_e / (K_ε·E) for equal E)
    * IC = (K_ε − K_final)/K_ε, PR = total − IC  (= (K_final·E − Σ K_e)/(K_ε·E) for equal E)

    Runs of different length (the inverse problem compares at equal accuracy) are allowed:
    ``same_length`` says whether E (and the steps) agree.

    Measured, from the iterations the ledgers saw actually run (max over the batch per solve):
    ``measured_forward_savings``, ``measured_backward_savings`` and ``measured_iteration_savings``
    (forward + backward) are 1 − PRDP/converged (None where converged ran none). Wall clock:
    ``wall_train_savings`` (training phases only, the paper's) and ``wall_total_savings`` (with
    validation). Finally both final metrics and ``final_metric_ratio`` = PRDP / converged. The keys
    are those of :data:`QUANTITIES`.
    """
    p, c = _as_ledger(prdp, "prdp"), _as_ledger(converged, "converged")
    k_converged = integer("k_converged", k_converged, minimum=1)
    final_p = check_metric(prdp_final_metric, False, "prdp_final_metric")
    final_c = check_metric(converged_final_metric, False, "converged_final_metric")
    for ledger, name in ((p, "prdp"), (c, "converged")):
        if not ledger.epochs:
            raise ValueError(f"the {name} ledger has no finished epochs.")
    ks = [e["k"] for e in p.epochs]
    if any(k is None for k in ks):
        first = next(e["epoch"] for e in p.epochs if e["k"] is None)
        raise ValueError(f"the prdp ledger has no budget K for epoch {first}; call record_budget(k) each epoch.")
    w_p, weighting = _weights(p, "prdp")
    w_c, weighting_c = _weights(c, "converged")
    if weighting != weighting_c:
        raise ValueError(f"the prdp ledger is weighted by {weighting}, the converged one by {weighting_c}; "
                         "count optimiser steps in both runs or in neither.")
    cost_p = sum(k * w for k, w in zip(ks, w_p))
    cost_c = k_converged * sum(w_c)
    k_final = ks[-1]
    total = 1.0 - cost_p / cost_c
    ic = (k_converged - k_final) / k_converged
    tp, tc = p.totals(), c.totals()
    iters_p = tp["forward_iters"] + tp["backward_iters"]
    iters_c = tc["forward_iters"] + tc["backward_iters"]
    with_val_p = tp["train_seconds"] + tp["validation_seconds"]
    with_val_c = tc["train_seconds"] + tc["validation_seconds"]
    return {
        "k_converged": k_converged, "epochs": len(p.epochs), "epochs_converged": len(c.epochs),
        "same_length": len(p.epochs) == len(c.epochs) and w_p == w_c, "weighting": weighting,
        "k_final": k_final, "sum_k": sum(ks),
        "prdp_nominal_cost": cost_p, "conv_nominal_cost": cost_c,
        "ic": ic, "pr": total - ic, "total": total,
        "prdp_forward_iters": tp["forward_iters"], "conv_forward_iters": tc["forward_iters"],
        "prdp_backward_iters": tp["backward_iters"], "conv_backward_iters": tc["backward_iters"],
        "prdp_iters": iters_p, "conv_iters": iters_c,
        "measured_forward_savings": _saving(tp["forward_iters"], tc["forward_iters"]),
        "measured_backward_savings": _saving(tp["backward_iters"], tc["backward_iters"]),
        "measured_iteration_savings": _saving(iters_p, iters_c),
        "prdp_train_seconds": tp["train_seconds"], "conv_train_seconds": tc["train_seconds"],
        "wall_train_savings": _saving(tp["train_seconds"], tc["train_seconds"]),
        "prdp_seconds_with_validation": with_val_p, "conv_seconds_with_validation": with_val_c,
        "wall_total_savings": _saving(with_val_p, with_val_c),
        "prdp_final": final_p, "conv_final": final_c,
        "final_metric_ratio": None if final_c == 0 else final_p / final_c,
    }


def _cell(value: Any, fmt: str) -> str:
    """One table cell: a number in its format, a string as it is, an aggregate
    (``{"mean": .., "std": ..}``) as ``mean ± std``, None as "–"."""
    if value is None:
        return "–"
    if isinstance(value, str) or fmt == "text":
        return str(value)
    if isinstance(value, Mapping):
        spread = _cell(value["std"], fmt).rstrip("%") if fmt in ("pct", "int") else f"{value['std']:.1g}"
        return f"{_cell(value['mean'], fmt)} ± {spread}"
    if fmt == "pct":
        return f"{100.0 * value:.1f}%"
    if fmt == "int":
        if isinstance(value, float) and not value.is_integer():
            return f"{value:.3g}"
        return str(int(value))
    if fmt == "sec":
        return f"{value:.3g}"
    if fmt == "sci":
        return f"{value:.3e}"
    return f"{value:.3f}"


def savings_table(columns: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = REPORT_KEYS, *,
                  quantities_as_rows: bool = True, corner: str = "quantity") -> str:
    """A markdown table of savings rows (reports, aggregates over seeds, the paper's numbers).

    ``columns`` maps a heading (``"ours"``, ``"paper"``, a seed) to a row in the vocabulary of
    :data:`QUANTITIES`; ``keys`` picks and orders the quantities. By default each quantity is a
    line and each row a column; ``quantities_as_rows=False`` transposes (one line per row, as in a
    per-seed table). Missing entries print as "–".
    """
    unknown = [key for key in keys if key not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown savings quantity {unknown}; known: {', '.join(QUANTITIES)}.")
    cells = {name: [_cell(row.get(key), QUANTITIES[key][1]) for key in keys] for name, row in columns.items()}
    if quantities_as_rows:
        header = [corner, *columns]
        lines = [[QUANTITIES[key][0], *(cells[name][i] for name in columns)] for i, key in enumerate(keys)]
    else:
        header = [corner, *(QUANTITIES[key][0] for key in keys)]
        lines = [[str(name), *cells[name]] for name in columns]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def format_savings_markdown(report: dict, paper_row: dict | None = None) -> str:
    """A markdown table of a :func:`savings_report`, with the paper's numbers beside it.

    ``paper_row`` maps keys of :data:`QUANTITIES` (``k_converged``, ``epochs``, ``k_final``,
    ``ic``, ``pr``, ``total``, ``conv_train_seconds``, ...) to numbers (fractions for percentages)
    or strings such as ``"≈12"``, shown as they are; missing entries print as "–".
    """
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"report lacks {missing}; pass the dict savings_report() returns.")
    columns = {"ours": report}
    if paper_row is not None:
        unknown = sorted(set(paper_row) - set(QUANTITIES))
        if unknown:
            raise ValueError(f"paper_row has unknown key(s) {unknown}; allowed: {', '.join(QUANTITIES)}.")
        columns["paper"] = paper_row
    return savings_table(columns)
