"""One module per ``cln-textgen`` subcommand (see :mod:`cln_textgen.cli`)."""

import sys


def add_config_args(parser):
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.batch_size=16 (repeatable)")


def add_training_args(parser):
    """The config and the flags of the commands that train a run (train, pretrain)."""
    add_config_args(parser)
    parser.add_argument("--stop-at-step", type=int, metavar="N",
                        help="save and stop once N optimizer steps are done (resume later)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if run_dir is in use: the old folder is "
                             "moved aside to RUN_DIR.old-TIME (nothing is deleted)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config (defaults, file, --set) and exit")


def training_config(args, load, example):
    """The merged config of ``--config`` and ``--set`` (``load(path, overrides)``),
    or None once printed for ``--print-config``."""
    from cln_textgen.errors import UserError

    if args.config is None and not args.overrides:
        raise UserError(f"--config: give a YAML config (see configs/), e.g. --config {example}")
    config = load(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(config.to_yaml())
        return None
    return config


def add_checkpoint_arg(parser):
    """``--checkpoint`` of the commands that load one checkpoint of a run."""
    parser.add_argument("--checkpoint", default="best", metavar="WHICH",
                        help="best (default), latest, a step of the run, or a checkpoint path")


def say(text=""):
    print(text, flush=True)


def training_stopped(error, command, report=say):
    """Exit code of a training that stopped early (a ``TrainingInterrupted``,
    ``TrainingDiverged`` or ``SaveFailed`` of the trainer), after saying why:
    130 for Ctrl-C and 143 for SIGTERM (a checkpoint is kept and the same
    command resumes), 1 for a diverged loss or a save that failed."""
    from cln_textgen.training.trainer import TrainingInterrupted

    if isinstance(error, TrainingInterrupted):
        report(str(error))
        return error.exit_code
    print(f"cln-textgen {command}: error: {error}", file=sys.stderr)
    return 1
