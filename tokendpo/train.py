"""`python -m tokendpo.train`: the training command line.

    python -m tokendpo.train [--config FILE.yaml] [--key value ...]     # train(cfg) on your data
    python -m tokendpo.train --task NAME                                 # the built-in pipeline
    python -m tokendpo.train                                             # the default run (--task sentiment)

A thin entry point: it parses the flags (`tokendpo.config`) and calls the library — `tokendpo.training.train`
or `tokendpo.tasks.pipeline.run_pipeline` (looked up at call time, so tests can stand in for it). Errors in the
user's input print one `error: ...` line and exit 2.
"""

from __future__ import annotations

import json
import sys

from tokendpo import config as config_mod
from tokendpo.rundir import RunLockedError
from tokendpo.tasks import pipeline
from tokendpo.batches import micro_batch  # noqa: F401 - re-exported for library users
from tokendpo.training import NonFiniteError, train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if config_mod.main_help_requested(argv):
        print(config_mod.help_text())
        return 0
    try:
        cli_values, _ = config_mod.parse_cli(argv)
        cfg = config_mod.resolve(argv)
        if cfg.task.task or not argv:
            task = cfg.task.task or "sentiment"
            # the default task's run is outputs/default (the contract); another task gets its own dir, so running
            # both never collides in one pipeline dir
            default_dir = "outputs/default" if task == "sentiment" else f"outputs/{task}"
            output_dir = cfg.train.output_dir if "output_dir" in cli_values else default_dir
            pipeline.run_pipeline(task, output_dir, seed=cfg.train.seed, progress=cfg.train.progress)
            return 0
        result = train(cfg, cli_values=cli_values)
    except (config_mod.ConfigError, ValueError, FileNotFoundError, OSError, NonFiniteError, RunLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: round(v, 6) for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
