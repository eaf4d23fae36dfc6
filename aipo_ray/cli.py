"""`aipo`: run, resume, inspect, report on, evaluate and serve iterative preference runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from aipo_ray.config import ConfigError, load_config
from aipo_ray.console import console_stream, log_to_run_dir, restore_stderr

log = logging.getLogger("aipo_ray")


def _setup_logging(verbose: bool, capture_native: bool = False) -> None:
    from aipo_ray.console import setup_logging

    setup_logging(verbose, capture_native)


def cmd_validate(args) -> int:
    config = load_config(args.config, args.overrides)
    if args.address:
        return _check_resources_on(args.address, config)
    print(config.to_json())
    return 0


def _check_resources_on(address: str, config) -> int:
    """`validate --address`: every resource ask of the run against that running cluster's nodes;
    2 when one can never be met (the run would wait forever)."""
    import ray

    from aipo_ray.resources import InfeasibleResourceError, asks_for_config, check_cluster

    ray.init(address=address, log_to_driver=False)
    try:
        checks = check_cluster(asks_for_config(config))
    except InfeasibleResourceError as e:
        print("\n".join(check.describe() for check in e.checks))
        print(f"aipo validate: {e}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    print("\n".join(check.describe() for check in checks))
    return 0


def cmd_plan(args) -> int:
    """Per stage: what it starts, what each member asks, where one fits; exit 2 if never."""
    from aipo_ray import resource_plan

    config = load_config(args.config, args.overrides)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        from aipo_ray.resources import autoscaling_node_types

        ray.init(address=address, log_to_driver=False)
        try:
            nodes, autoscaling = ray.nodes(), autoscaling_node_types()
        finally:
            ray.shutdown()
    else:
        nodes, autoscaling = resource_plan.local_nodes(config), False
    plans = resource_plan.plan(config, nodes, autoscaling)
    print(resource_plan.format_plan(plans, nodes, resource_plan.iteration_gpu_hours(config)))
    return 2 if resource_plan.infeasible(plans) else 0


def cmd_run(args) -> int:
    from aipo_ray.pipeline.driver import run

    config = load_config(args.config, args.overrides)
    if args.run_dir:
        config = config.model_copy(update={"run_dir": args.run_dir})
    summary = run(config)
    _print_finish(summary)
    return 0


def cmd_resume(args) -> int:
    from aipo_ray.pipeline.driver import resume

    summary = resume(args.run_dir, args.overrides)
    _print_finish(summary)
    return 0


def cmd_sweep(args) -> int:
    from aipo_ray.sweeps import run_sweep

    results = run_sweep(args.sweep, root=args.root, overrides=args.overrides)
    print(f"\nsweep finished: {len(results)} variants")
    for r in results:
        state = f"latest {r.latest_model}" if r.status == "finished" else \
            f"FAILED: {(r.error or '').splitlines()[0]}"
        print(f"  {r.name:<32} {r.seconds:7.0f}s  {r.run_dir}  {state}")
    return 1 if any(r.status == "failed" for r in results) else 0


def _print_finish(summary) -> None:
    print(f"\nrun finished in {summary.seconds:.0f}s: {summary.run_dir}")
    print(f"  latest model: {summary.run_dir}/models/{summary.latest_model}")
    print(f"  status:       aipo status {summary.run_dir}")
    print(f"  report:       aipo report {summary.run_dir}")


def cmd_status(args) -> int:
    from aipo_ray.config import StorageConfig
    from aipo_ray.pipeline.status import NotARunDirectory, format_status, run_status
    from aipo_ray.storage import RunDir

    run_dir = RunDir(args.run_dir, StorageConfig())
    while True:
        try:
            info = run_status(run_dir)
        except NotARunDirectory as e:
            print(f"aipo status: {e}", file=sys.stderr)
            return 2
        text = json.dumps(info, indent=2) if args.json else format_status(info)
        if not args.watch:
            print(text)
            return 0
        if sys.stdout.isatty():
            print("\033[H\033[2J", end="")  # clear the screen, cursor home
        print(text, flush=True)
        if _run_finished(info):
            return 0
        time.sleep(args.watch)


def _run_finished(info: dict) -> bool:
    """The planned last iteration's model is committed (what `--watch` waits for)."""
    from aipo_ray.storage import iteration_name

    planned = info.get("iterations_planned") or 0
    return any(ck["committed"] and ck["name"] == iteration_name(planned)
               for ck in info.get("checkpoints", []))


def _log_to(run_dir: str) -> None:
    """Detail of a command on an existing run directory goes to its logs/ (never creates one)."""
    if "://" in run_dir or os.path.isdir(run_dir):
        log_to_run_dir(run_dir)


def cmd_report(args) -> int:
    from aipo_ray.report import write_report

    _log_to(args.run_dir)
    path = write_report(args.run_dir, output=args.output)
    print(f"report written: {path}")
    return 0


def cmd_eval(args) -> int:
    from aipo_ray.report.evaluate import evaluate_run
    from aipo_ray.report.winrate import format_comparison

    _log_to(args.run_dir)  # generation and the judge log there, not on the console
    result = evaluate_run(args.run_dir, overrides=args.overrides)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    judge = result["judge"]
    print(f"eval of {result['run_dir']}: {result['prompts']['n']} held-out prompts, judge "
          f"{judge['backend']} ({judge['model']}), both orders")
    for comparison in result["comparisons"]:
        print("  " + format_comparison(comparison))
    print(f"  details: {result['run_dir']}/eval.json")
    return 0


def cmd_compare(args) -> int:
    from aipo_ray.report.compare import compare_runs

    # Run directories and key=value overrides share the positional list (a path has no '=').
    run_dirs = [a for a in args.run_dirs if "=" not in a]
    overrides = [*(a for a in args.run_dirs if "=" in a), *args.overrides]
    try:
        _log_compare_to(args.output, run_dirs)
        result = compare_runs(run_dirs, output=args.output, evaluate=not args.no_eval,
                              overrides=overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"aipo compare: {e}", file=sys.stderr)
        return 2
    print(f"comparison written: {result['output']}/index.html")
    return 0


def _log_compare_to(output: str | None, run_dirs: list[str]) -> None:
    """Generation and the judge log to `<output>/logs/driver.log`, not on the console."""
    from aipo_ray.config import StorageConfig
    from aipo_ray.report.compare import default_output, expand_sweep_roots

    if not run_dirs:
        return  # compare_runs says what is missing
    output = output or default_output(expand_sweep_roots(run_dirs, StorageConfig()))
    if "://" not in output:
        os.makedirs(output, exist_ok=True)
    log_to_run_dir(output)


def cmd_serve(args) -> int:
    from aipo_ray.serve import serve_checkpoint

    serve_checkpoint(args.checkpoint, config_path=args.config, overrides=args.overrides,
                     blocking=True)
    print("stopped serving")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aipo", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def overrides(sp):
        sp.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. training.learning_rate=1e-6")

    sp = sub.add_parser("run", help="run T iterations from a config (resumes if the run dir exists)")
    sp.add_argument("config", help="YAML config file")
    sp.add_argument("--run-dir", help="local path or s3://bucket/prefix (overrides run_dir)")
    overrides(sp)
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("resume", help="continue a run from its run.json, skipping finished stages")
    sp.add_argument("run_dir")
    overrides(sp)
    sp.set_defaults(fn=cmd_resume)

    sp = sub.add_parser("sweep", help="run (or resume) every variant of a sweep file, sharing "
                        "equal stages between variants")
    sp.add_argument("sweep", help="sweep YAML (base config, overrides, variants and/or grid)")
    sp.add_argument("--root", help="where the variants' run directories go (default runs/<stem>)")
    overrides(sp)
    sp.set_defaults(fn=cmd_sweep)

    sp = sub.add_parser("status", help="iterations, stages, rows, checkpoints and elapsed time")
    sp.add_argument("run_dir")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until the run is done; Ctrl-C stops")
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("validate", help="print the resolved config, or every error in it")
    sp.add_argument("config")
    sp.add_argument("--address", help="check the run's resource asks against this running Ray "
                    "cluster instead (exit 2 when one can never be met)")
    overrides(sp)
    sp.set_defaults(fn=cmd_validate)

    sp = sub.add_parser("plan", help="per stage: actors/workers, their resource asks, where they "
                        "fit, GPU-hours of an iteration (exit 2 if an ask can never be met)")
    sp.add_argument("config")
    sp.add_argument("--address", help="a running Ray cluster (default: RAY_ADDRESS, else this "
                    "machine as `aipo run` would start Ray on it)")
    overrides(sp)
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("report", help="HTML page + PNG plots of a run (works while it runs)")
    sp.add_argument("run_dir")
    sp.add_argument("--output", help="where to write (default <run_dir>/report)")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("eval", help="win rate of each committed model over the previous one")
    sp.add_argument("run_dir")
    sp.add_argument("--json", action="store_true", help="print eval.json instead of a summary")
    overrides(sp)
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("compare", help="variants side by side: lengths, s_ref, win rates vs "
                        "θ_0, training curves (HTML, PNG, compare.json)")
    sp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories or a sweep root, then key.sub=value overrides for the "
                    "win rates (eval.*, ranking.*)")
    sp.add_argument("--output", help="where to write (default: the sweep root's compare/)")
    sp.add_argument("--no-eval", action="store_true", help="data only: no generation, no judge")
    sp.set_defaults(fn=cmd_compare, overrides=[])

    sp = sub.add_parser("serve", help="OpenAI-compatible chat completions + /rank for a checkpoint")
    sp.add_argument("checkpoint", help="committed checkpoint URI or model dir")
    sp.add_argument("--config", help="run config for ranker and serve settings")
    overrides(sp)
    sp.set_defaults(fn=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`run X.yaml --run-dir D k=v`); argparse stops filling the
    # positional list at the first option, so the rest arrives as unknown arguments.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    # The real command (argv None) keeps native stderr off the console; in-process callers
    # (tests, scripts) keep their own stderr.
    _setup_logging(args.verbose, capture_native=argv is None)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"aipo {args.command}: {e}", file=console_stream())
        return 2
    except KeyboardInterrupt:
        print("interrupted; `aipo resume` continues where this stopped", file=console_stream())
        return 130
    finally:
        restore_stderr()


if __name__ == "__main__":
    sys.exit(main())
