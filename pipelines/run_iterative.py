"""Entry point for `ray job submit -- python pipelines/run_iterative.py --config CONFIG [k=v ...]`.

Under `ray job submit` RAY_ADDRESS is set, so the driver joins the job's cluster; run directly,
it starts an embedded local Ray. Re-submitting the same config resumes the run.
"""

import argparse
import sys


def main(argv=None) -> int:
    from aipo_ray.config import ConfigError, load_config
    from aipo_ray.console import setup_logging
    from aipo_ray.pipeline.driver import run

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("--run-dir", help="local path or s3:// prefix (overrides run_dir)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="everything on the console (Ray, vLLM, ...), not only stage lines")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args, extra = parser.parse_known_args(argv)
    if any("=" not in e or e.startswith("-") for e in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    setup_logging(args.verbose)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.run_dir:
        config = config.model_copy(update={"run_dir": args.run_dir})
    summary = run(config)
    print(f"done: {summary.run_dir} latest={summary.latest_model} in {summary.seconds:.0f}s")
    return 0


# vLLM spawns worker processes that re-import this file: the guard keeps them from re-running it.
if __name__ == "__main__":
    sys.exit(main())
