"""One module per ``cln-textgen`` subcommand (see :mod:`cln_textgen.cli`)."""

import sys


def add_config_args(parser):
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.batch_size=16 (repeatable)")


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
