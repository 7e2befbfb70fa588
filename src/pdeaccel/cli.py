"""The ``pdeaccel`` command line.

    pdeaccel demo                         PRDP vs converged on heat-2d (cpu size), savings table + figures
    pdeaccel experiments [NAME]           list the built-in experiments, or show one's config keys
    pdeaccel train NAME [--schedule prdp|converged|fixed:K|linear:K0:K1] [--nproc N] [--device cpu|cuda|auto]
                   [--sub-solver-ranks G] [key=value ...]
    pdeaccel compare NAME --seeds N       PRDP vs converged over N seeds
    pdeaccel sweep NAME --k 1,2,4,8       final validation error against a fixed K
    pdeaccel simulate NAME [--steps N]    run a named numerical simulation, write HDF5 + figures
    pdeaccel simulate --model RUN [--env cylinder|box|moving|mask.png] [--resolution R:Q]   roll out a trained flow model
    pdeaccel export RUN --out models/NAME   a trained flow run as safetensors + JSON (never pickle)
    pdeaccel report RUN_DIR               rebuild figures and report.md from a run directory
    pdeaccel control [PROBLEM] [--model RUN|numerical] [--target F,...]   steer vortex shedding (flow control)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, flatten, to_yaml


def _add_common(p: argparse.ArgumentParser, out_default: str = "runs/<experiment>/<timestamp>") -> None:
    # default None (= cpu) so that a --size typed with --resume can be checked against the run's
    p.add_argument("--size", default=None, help="experiment size: cpu (default; minutes on a laptop), paper (the paper's setting) or, where an experiment has it, paper-cpu (the paper's setting at a CPU-affordable size); `pdeaccel experiments NAME --size S` lists what differs from the paper")
    p.add_argument("--out", default=None, help=f"run directory (default {out_default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.epochs=20 prdp.tau_step=0.95")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdeaccel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="PRDP vs converged training on heat-2d (cpu size)")
    p.add_argument("--experiment", default="heat-2d")
    p.add_argument("--seeds", type=int, default=1)
    _add_common(p, "runs/demo/<timestamp>")

    p = sub.add_parser("experiments", help="list experiments or show one's configuration")
    p.add_argument("name", nargs="?")
    p.add_argument("--size", default="cpu")

    p = sub.add_parser("train", help="train one experiment with a budget schedule")
    p.add_argument("name")
    p.add_argument("--schedule", default=None,
                   help="prdp (default) | converged | fixed:K | linear:K0:K1; not for solver-free experiments")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run directory")
    p.add_argument("--restart-if-damaged", action="store_true",
                   help="with --resume: if every checkpoint is damaged, start the run over (default: stop with an error)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel training in N processes on this machine (torchrun's launcher; gloo on CPU, "
                        "NCCL on GPUs); under torchrun the job's own size is used")
    p.add_argument("--sub-solver-ranks", type=int, default=1, metavar="G",
                   help="NeuralStagger (model.kind=staggered): split each model's sub-solvers over G processes, "
                        "gathered for the full-resolution loss; the processes / G model replicas train data "
                        "parallel (default 1: every process runs the whole model)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|auto",
                   help="where to train: cpu (default), cuda (GPU LOCAL_RANK of each process, NCCL between them; an "
                        "error if there is no GPU), auto (cuda where available); a GPU trains the flow experiments only")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="with several processes: how long a rank waits for the others before the job stops "
                        "(default 1800; $PDEACCEL_DIST_TIMEOUT)")
    _add_common(p)

    p = sub.add_parser("compare", help="PRDP vs converged over several seeds")
    p.add_argument("name")
    p.add_argument("--seeds", type=int, default=3)
    _add_common(p)

    p = sub.add_parser("sweep", help="final validation error against a fixed K")
    p.add_argument("name")
    p.add_argument("--k", required=True, help="comma-separated budgets, e.g. 1,2,4,8,16")
    p.add_argument("--seeds", type=int, default=1)
    _add_common(p)

    p = sub.add_parser("simulate", help="run a named numerical simulation, or a trained flow model (--model)")
    p.add_argument("name", nargs="?", help="simulation name (omit to list them)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--model", default=None, metavar="RUN_DIR",
                   help="roll out the trained flow model of a flow-2d/flow-3d run directory instead")
    p.add_argument("--env", default="cylinder",
                   help="with --model: cylinder | box | moving (held-out domains) | a mask file (.png, dark = solid; .npy)")
    p.add_argument("--inflow", type=float, default=None, help="with --model: mean inflow speed")
    p.add_argument("--resolution", default="full",
                   help="with a NeuralStagger --model: full | R | R:Q (R times coarser in space, Q in time: only "
                        "those sub-solvers run)")
    p.add_argument("--mirror", action="store_true",
                   help="with a 2D vanilla --model: step it mirror-equivariantly (model.mirror) whatever it was "
                        "trained with: a symmetric wake stays symmetric until the geometry breaks it")
    p.add_argument("--out", default=None)
    p.add_argument("--no-animation", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = sub.add_parser("export", help="write a trained flow run as a shareable model (safetensors + JSON)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="model directory to write, e.g. models/flow-2d")

    p = sub.add_parser("report", help="rebuild figures and report.md of a run directory")
    p.add_argument("run_dir")

    # flow control (pdeaccel.experiments.control)
    p = sub.add_parser("control", help="steer the vortex-shedding frequency through a learned or the numerical flow solver")
    p.add_argument("problem", nargs="?", help="control problem: inflow | magnus (omit to list them)")
    p.add_argument("--model", default="numerical", metavar="RUN_DIR|numerical",
                   help="a trained flow-2d / NeuralStagger run directory, or numerical (the differentiable MAC solver)")
    p.add_argument("--target", default=None, help="comma-separated target frequencies (default: the problem's)")
    p.add_argument("--resolution", default="full",
                   help="with a NeuralStagger --model: full | R | R:Q (R times coarser in space, Q in time)")
    p.add_argument("--show", action="store_true", help="print the problem's configuration and its keys")
    _add_common(p, "runs/control/<problem>/<timestamp>")
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """``warning: message``: a user of the command needs the message, not our source line."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning  # only while the command runs, never at import
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    # overrides (key=value) may come before or after options; argparse alone would reject the latter
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from .train import distributed
    from .train.trainer import DivergenceError

    def report(kind: str, exc: BaseException) -> None:
        ctx = distributed.context()
        if not ctx.distributed:
            print(f"pdeaccel {args.command}: {kind}: {exc}", file=sys.stderr)
        # an error rank 0 raised too (a decision it took and broadcast, a divergence of the
        # reduced loss) is printed once, by rank 0
        elif ctx.is_main or not (getattr(exc, "from_main_rank", False) or isinstance(exc, DivergenceError)):
            print(f"pdeaccel {args.command} [rank {ctx.rank}/{ctx.world_size}]: {kind}: {exc}", file=sys.stderr)

    try:
        code = _dispatch(args)
        distributed.shutdown()
        return code
    except distributed.RankFailure as exc:
        report("error", exc)
        # the process group lost a peer: leave without tearing it down (that can block or abort)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(distributed.RANK_FAILURE_EXIT)
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError, OSError) as exc:
        report("error", exc)
        return 2
    except (DivergenceError, FloatingPointError) as exc:
        report("numerical failure", exc)
        return 3
    except KeyboardInterrupt:
        print(f"pdeaccel {args.command}: interrupted; completed epochs are checkpointed "
              "(continue with `pdeaccel train NAME --resume RUN_DIR`).", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from .experiments import runner

    progress = not getattr(args, "quiet", False)
    if args.command == "demo":
        return _demo(args, progress)
    if args.command == "experiments":
        return _experiments(args)
    from .train import distributed

    world = distributed.environment_world_size()
    if world > 1 and args.command != "train":
        raise ConfigError(f"`pdeaccel {args.command}` runs in one process; only `pdeaccel train` trains data parallel "
                          f"(this process is one of {world} started by torchrun).")
    if args.command == "train":
        if args.nproc is not None and args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}.")
        if args.dist_timeout is not None:
            if not args.dist_timeout > 0:
                raise ConfigError(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}.")
            os.environ[distributed.TIMEOUT_ENV] = str(args.dist_timeout)
        if world > 1 and args.nproc is not None and args.nproc != world:
            raise ConfigError(f"--nproc {args.nproc} disagrees with the {world} processes torchrun started; "
                              "leave --nproc out under torchrun.")
        if world == 1 and args.nproc is not None and args.nproc > 1:
            return _launch(args)
        distributed.init_from_environment(sub_solver_ranks=args.sub_solver_ranks, device=args.device)
        if args.resume:
            if args.out is not None and Path(args.out) != Path(args.resume):
                raise ConfigError(f"--out {args.out} and --resume {args.resume} disagree; a resumed run stays "
                                  "in its directory (give --resume RUN_DIR only).")
            # what was typed is checked against the run: only train.epochs/train.target_metric may change
            summary = runner.train_run(args.name, size=args.size, schedule=args.schedule, overrides=args.overrides,
                                       seed=args.seed, out=args.resume, resume=True, progress=progress,
                                       restart_if_damaged=args.restart_if_damaged)
        else:
            if args.restart_if_damaged:
                raise ConfigError("--restart-if-damaged only applies with --resume RUN_DIR.")
            summary = runner.train_run(args.name, size=args.size, schedule=args.schedule,
                                       overrides=args.overrides, out=args.out, seed=args.seed, progress=progress)
        if not distributed.context().is_main:
            return 0
        ranks = f", {summary['world_size']} processes" if summary.get("world_size", 1) > 1 else ""
        print(f"{summary['experiment']} ({summary['schedule']}): final validation metric "
              f"{summary['final_val_metric']:.4g}, K_final {summary['k_final']}, "
              f"{summary['forward_iters'] + summary['backward_iters']} solver iterations, "
              f"{summary['train_seconds']:.1f} s training{ranks}")
        print(f"run directory: {summary['run_dir']}")
        return 0
    if args.command == "compare":
        data = runner.compare(args.name, seeds=args.seeds, size=args.size or "cpu", overrides=args.overrides,
                              out=args.out, progress=progress)
        print((Path(data["run_dir"]) / "report.md").read_text())
        return 0
    if args.command == "sweep":
        try:
            ks = [int(k) for k in args.k.split(",") if k.strip()]
        except ValueError:
            raise ConfigError(f"--k must be comma-separated integers such as 1,2,4,8; got {args.k!r}") from None
        data = runner.sweep(args.name, ks, seeds=args.seeds, size=args.size or "cpu", overrides=args.overrides,
                            out=args.out, progress=progress)
        print((Path(data["run_dir"]) / "report.md").read_text())
        return 0
    if args.command == "simulate":
        return _simulate(args, progress)
    if args.command == "export":
        from .experiments.flow_eval import export_flow_model

        print(f"model written to {export_flow_model(args.run_dir, args.out)}")
        return 0
    if args.command == "report":
        path = runner.rebuild_report(args.run_dir)
        print(path.read_text())
        return 0
    if args.command == "control":
        from .experiments.control import cli_main

        return cli_main(args, progress)
    raise AssertionError(args.command)


def _launch(args: argparse.Namespace) -> int:
    """``pdeaccel train ... --nproc N``: check the command once here, then run it in N processes
    with torchrun's launcher (each process is ``python -m pdeaccel train ...`` without --nproc)."""
    import torch

    from .experiments import runner
    from .train import distributed

    if args.resume and args.out is not None and Path(args.out) != Path(args.resume):
        raise ConfigError(f"--out {args.out} and --resume {args.resume} disagree; a resumed run stays "
                          "in its directory (give --resume RUN_DIR only).")
    if args.restart_if_damaged and not args.resume:
        raise ConfigError("--restart-if-damaged only applies with --resume RUN_DIR.")
    cfg, _, run_dir, _ = runner.plan_train(args.name, size=args.size, schedule=args.schedule,
                                           overrides=args.overrides, out=args.resume or args.out, seed=args.seed,
                                           resume=bool(args.resume))
    # refused here, before any process starts
    distributed.check_layout(args.nproc, args.sub_solver_ranks)
    if distributed.resolve_device(args.device) != "cpu" and args.nproc > torch.cuda.device_count():
        raise ConfigError(f"--device {args.device} --nproc {args.nproc}: this machine has "
                          f"{torch.cuda.device_count()} GPU(s); give --nproc {torch.cuda.device_count()} or fewer.")
    distributed.rank_pool_config(cfg, distributed.DistContext(world_size=args.nproc,
                                                              sub_solver_ranks=args.sub_solver_ranks))
    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            argv.append(item)
    if not args.resume and args.out is None:
        argv += ["--out", str(run_dir)]  # every rank must use the directory planned here
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        from .train.launcher import launch

        return launch(argv, args.nproc, run_dir=str(run_dir), name=args.name)
    except SignalException as exc:
        print(f"pdeaccel train: stopped by {exc.sigval.name}; completed epochs are checkpointed (continue with "
              f"`pdeaccel train {args.name} --resume {run_dir}`).", file=sys.stderr)
        return 130


def _demo(args: argparse.Namespace, progress: bool) -> int:
    from .experiments import runner
    from .experiments.registry import timestamped_run_dir

    out = args.out or str(timestamped_run_dir("demo"))
    print(f"pdeaccel demo: PRDP against converged training on {args.experiment} ({args.size or 'cpu'} size, "
          f"{args.seeds} seed(s)). Run directory: {out}\n", flush=True)
    data = runner.compare(args.experiment, seeds=args.seeds, size=args.size or "cpu", overrides=args.overrides,
                          out=out, progress=progress)
    print((Path(data["run_dir"]) / "report.md").read_text())
    print(f"Figures: {Path(data['run_dir']) / 'comparison.png'} and each run's training.png")
    return 0


def _experiments(args: argparse.Namespace) -> int:
    from .experiments.registry import get_experiment, list_experiments

    if args.name is None:
        for exp in list_experiments():
            print(f"{exp.name:20s} {exp.description}  (sizes: {', '.join(exp.sizes)})")
        return 0
    exp = get_experiment(args.name)
    cfg = exp.config(args.size)  # an unknown size fails here, naming the sizes
    print(f"# {exp.name}: {exp.description}\n# size {args.size} (sizes: {', '.join(exp.sizes)}); override any key "
          "with key=value\n")
    print(to_yaml(cfg))
    print("# keys: " + ", ".join(flatten(cfg)))
    deviations = exp.deviations.get(args.size)
    if deviations:
        print(f"\n# deviations from the paper at size {args.size}:")
        for line in deviations:
            print(f"#  - {line}")
    return 0


def _simulate(args: argparse.Namespace, progress: bool) -> int:
    from .experiments.simulations import SIMULATIONS, simulate

    if args.model is not None:
        from .experiments.flow_eval import simulate_trained

        if args.name is not None or args.overrides:
            raise ConfigError("with --model, give the environment with --env (and --steps, --inflow), "
                              "not a simulation name or key=value overrides.")
        report = simulate_trained(args.model, args.env, steps=args.steps or 200, inflow=args.inflow, out=args.out,
                                  animate=not args.no_animation, progress=progress, resolution=args.resolution,
                                  mirror=args.mirror)
        print((Path(report["run_dir"]) / "report.md").read_text())
        print(f"run directory: {report['run_dir']}")
        return 0
    if args.mirror:
        raise ConfigError("--mirror applies to a trained flow model: give --model RUN_DIR|MODEL.")
    if args.name is None:
        for name, sim in SIMULATIONS.items():
            print(f"{name:20s} {sim.description}")
        return 0
    result = simulate(args.name, steps=args.steps, overrides=args.overrides, out=args.out, progress=progress,
                      animate=not args.no_animation)
    run_dir = Path(result["run_dir"])
    if (run_dir / "report.md").exists():
        print((run_dir / "report.md").read_text())
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
