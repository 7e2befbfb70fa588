"""How the work of a multi-process job is shared among its ranks: each rank's part of the flow
training pool (and the pool state merged for a checkpoint and split again on resume, by any
number of ranks), and NeuralStagger's sub-solvers spread over the ranks of one model replica.
Used by :mod:`pdeaccel.train.distributed` and the trainer."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .._checks import ArgumentError, integer

if TYPE_CHECKING:
    from .distributed import DistContext


# ---------------------------------------------------------------------- the flow pool
def rank_pool_config(cfg: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """The config rank ``ctx.rank`` builds its experiment from: for a pool experiment with
    ``N > 1`` replicas (:attr:`DistContext.replicas`: ranks, or ranks / ``sub_solver_ranks``), the
    replica's own pool of ``pool.size / N`` environments, seed ``pool.seed + replica``,
    ``reset_every``/``perturb_every`` ``N`` times longer, a warm bank of ``warm_bank / N``
    (at least 1) and a batch of ``train.batch_size / N``. The ranks of one replica build the same.

    What "the same result as one process" means for the pool: the union of the ``N`` replica pools
    has the single pool's size, and every environment is advanced ``B / size`` model calls per
    optimiser step and reset once per ``size · reset_every`` steps on average, as in the single
    pool, so the distribution of states (their ages) is the same; each optimiser step averages the
    gradient over ``B`` environments drawn from it. The environments themselves are other samples
    (other seeds), so the runs agree statistically, not number for number. With one replica
    (one process, or every rank sharing one model's sub-solvers) the run is the single process's.

    A job that splits sub-solvers (``ctx.sub_solver_ranks > 1``) is checked here too: it needs a
    NeuralStagger model (``model.kind=staggered``) with at least as many sub-solvers as ranks share
    them.
    """
    if ctx.sub_solver_ranks > 1:
        check_sub_solver_split(cfg, ctx.sub_solver_ranks)
    if ctx.replicas == 1 or "pool" not in cfg:
        return cfg
    from ..config import ConfigError

    n = ctx.replicas
    what = "number of processes" if ctx.sub_solver_ranks == 1 else \
        f"number of model replicas ({ctx.world_size} processes / --sub-solver-ranks {ctx.sub_solver_ranks})"
    pc, t = cfg["pool"], cfg["train"]
    for key, value in (("pool.size", pc["size"]), ("train.batch_size", t["batch_size"])):
        if value % n:
            raise ConfigError(f"{key}={value} must be divisible by the {what} ({n}): each one "
                              f"owns 1/{n} of it.")
    out = copy.deepcopy(cfg)
    out["pool"].update(size=pc["size"] // n, seed=pc["seed"] + ctx.replica, reset_every=pc["reset_every"] * n,
                       perturb_every=pc["perturb_every"] * n, warm_bank=max(1, pc["warm_bank"] // n))
    if pc.get("young"):
        # young / N slots per replica, reset N times less often: the same share of the pool and the
        # same lifetime in model calls as the single pool's young slots
        out["pool"].update(young=max(1, pc["young"] // n), young_reset_every=pc["young_reset_every"] * n)
    out["train"]["batch_size"] = t["batch_size"] // n
    return out


# ---------------------------------------------------------------------- NeuralStagger over ranks
def check_layout(world_size: int, sub_solver_ranks: int) -> None:
    """Refuse a split of sub-solvers that the job's ranks cannot form (a ``ConfigError``)."""
    from ..config import ConfigError

    try:
        integer("--sub-solver-ranks", sub_solver_ranks, minimum=1)
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None
    if world_size % sub_solver_ranks:
        raise ConfigError(f"--sub-solver-ranks {sub_solver_ranks} needs a number of processes that is a multiple "
                          f"of it (each model replica's sub-solvers are split over {sub_solver_ranks} processes); "
                          f"this job has {world_size}.")


def rank_layout(rank: int, world_size: int, sub_solver_ranks: int) -> tuple[int, int]:
    """``(replica, member)`` of ``rank``: replica ``rank // G`` and its place ``rank % G`` among the
    ``G = sub_solver_ranks`` ranks that share that replica's sub-solvers.

    A replica's ranks are consecutive because they exchange the sub-fields at every model call
    (forward) while the replicas meet once per optimiser step (the gradient all-reduce); torchrun
    numbers the ranks of a node consecutively, so with ``G`` dividing the GPUs per node a replica
    stays on one node.
    """
    check_layout(world_size, sub_solver_ranks)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a job of {world_size} processes.")
    return rank // sub_solver_ranks, rank % sub_solver_ranks


def replica_ranks(replica: int, world_size: int, sub_solver_ranks: int) -> list[int]:
    """The ranks that share replica ``replica``'s sub-solvers (member order)."""
    return [r for r in range(world_size) if rank_layout(r, world_size, sub_solver_ranks)[0] == replica]


def sub_solver_shares(sub_solvers: int, sub_solver_ranks: int) -> tuple[tuple[int, ...], ...]:
    """The sub-solvers each member of a replica runs: round-robin, so that with
    ``sub_solvers % G != 0`` the shares differ by at most one."""
    if sub_solver_ranks > sub_solvers:
        from ..config import ConfigError

        raise ConfigError(f"--sub-solver-ranks {sub_solver_ranks} is more than the model's {sub_solvers} "
                          "sub-solvers: some processes would have none to run. Give at most "
                          f"{sub_solvers}.")
    from ..stagger import member_shares

    return member_shares(sub_solvers, sub_solver_ranks)


def check_sub_solver_split(cfg: dict[str, Any], sub_solver_ranks: int) -> None:
    """A ``ConfigError`` unless ``cfg`` trains a NeuralStagger model with at least
    ``sub_solver_ranks`` sub-solvers."""
    from ..config import ConfigError

    model = cfg.get("model")
    if not isinstance(model, dict) or model.get("kind") != "staggered":
        kind = model.get("kind", "vanilla") if isinstance(model, dict) else None
        what = f"model.kind={kind}" if kind else f"the experiment {cfg.get('experiment', '')!r}".replace(" ''", "")
        raise ConfigError(f"--sub-solver-ranks {sub_solver_ranks} splits a NeuralStagger model's sub-solvers over "
                          f"processes, but {what} has none (use a staggered flow experiment such as "
                          "flow-2d-s2t1, or model.kind=staggered; leave --sub-solver-ranks out for plain data "
                          "parallelism).")
    ndim = cfg["physics"]["ndim"]
    count = int(model["stride"]) ** ndim * int(model["window"])
    sub_solver_shares(count, sub_solver_ranks)


def place_sub_solvers(model: Any, ctx: DistContext) -> None:
    """Split ``model``'s sub-solvers over the ranks of this rank's replica (:func:`rank_layout`).

    Collective: every rank of the job calls it (``new_group`` is), in the same order. The
    all-gather the model calls goes through :meth:`DistContext._collective`, so a lost peer raises
    :class:`RankFailure` as every other collective does.
    """
    if ctx.sub_solver_ranks == 1:
        return
    from ..stagger import SubSolverPlacement

    split = getattr(model, "split_sub_solvers", None)
    if split is None:
        from ..config import ConfigError

        raise ConfigError(f"--sub-solver-ranks {ctx.sub_solver_ranks}: the model ({type(model).__name__}) has no "
                          "sub-solvers to split; only a NeuralStagger model (model.kind=staggered) can be.")
    import torch.distributed as dist

    group = None  # one replica: its group is the whole job
    if ctx.replicas > 1:
        for d in range(ctx.replicas):  # every rank creates every group, in the same order
            pg = ctx._collective("creating the sub-solver groups",
                                 lambda d=d: dist.new_group(replica_ranks(d, ctx.world_size, ctx.sub_solver_ranks)))
            if d == ctx.replica:
                group = pg
    size = ctx.sub_solver_ranks

    def all_gather(flat: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(flat) for _ in range(size)]
        ctx._collective("gathering the sub-solvers' outputs", lambda: dist.all_gather(out, flat, group=group))
        return out

    split(SubSolverPlacement(sub_solver_shares(model.sub_solvers, size), ctx.member, all_gather))


_POOL_RANK_KEYS = ("generator", "steps", "next_reset", "next_young", "rejected", "perturbed", "warm_specs", "warm_tensors")


def _per_environment_keys(state: dict[str, Any]) -> list[str]:
    n = len(state["specs"])
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n
            and k not in _POOL_RANK_KEYS]


def merge_pool_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One pool state holding the environments of every rank's pool (rank order).

    It loads into a single-process pool of the summed size; ``shards`` keeps each rank's own
    generator, counters and warm bank, so the same number of ranks resumes them exactly.
    """
    states = list(states)
    if len(states) == 1:
        return states[0]
    merged = copy.deepcopy({k: v for k, v in states[0].items() if k != "shards"})
    merged["specs"] = [copy.deepcopy(s) for st in states for s in st["specs"]]
    for key in _per_environment_keys(states[0]):
        merged[key] = torch.cat([st[key] for st in states])
    merged["rejected"] = sum(int(st["rejected"]) for st in states)
    merged["perturbed"] = sum(int(st.get("perturbed", 0)) for st in states)
    merged["next_reset"] = 0
    merged["shards"] = [{"size": len(st["specs"]), **{k: copy.deepcopy(st[k]) for k in _POOL_RANK_KEYS if k in st}}
                        for st in states]
    return merged


def split_pool_state(state: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Divide a pool state (one rank's, or a :func:`merge_pool_states` union) among ``n`` ranks.

    With the ranks it was merged from, every rank gets its own pool back exactly. Otherwise the
    environments are divided in order (``size`` must be divisible by ``n``); rank ``r`` continues
    with the generator and warm bank of the old rank ``r mod M`` (re-seeded from it for ``r >= M``
    so no two ranks draw alike) and its reset pointer at 0.
    """
    shards = state.get("shards")
    size = len(state["specs"])
    if n == 1:
        return [state]
    if size % n:
        raise ValueError(f"the checkpointed pool holds {size} environments, which {n} processes cannot share "
                         "equally; resume with a number of processes that divides it.")
    per = size // n
    keys = _per_environment_keys(state)
    out = []
    old = shards or [{k: state[k] for k in _POOL_RANK_KEYS if k in state}]
    exact = shards is not None and len(shards) == n and all(s["size"] == per for s in shards)
    for r in range(n):
        part = {k: copy.deepcopy(v) for k, v in state.items() if k not in keys and k not in ("specs", "shards")}
        part["specs"] = copy.deepcopy(state["specs"][r * per:(r + 1) * per])
        for key in keys:
            part[key] = state[key][r * per:(r + 1) * per].clone()
        own = old[r % len(old)]
        for key in _POOL_RANK_KEYS:
            if key in own:
                part[key] = copy.deepcopy(own[key])
        if not exact:
            part["next_reset"] = 0
            part["rejected"] = state["rejected"] if r == 0 else 0
            part["perturbed"] = state.get("perturbed", 0) if r == 0 else 0
            if r >= len(old):
                g = torch.Generator()
                g.set_state(own["generator"])
                seed = int(torch.randint(2 ** 62, (), generator=g)) + r
                part["generator"] = torch.Generator().manual_seed(seed).get_state()
        out.append(part)
    return out


#: task-state entries each rank owns (merge for the checkpoint, split on resume)
RANK_LOCAL_STATE: dict[str, tuple[Callable, Callable]] = {"pool": (merge_pool_states, split_pool_state)}
