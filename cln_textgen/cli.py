"""The ``cln-textgen`` command.

Each subcommand lives in ``cln_textgen/commands/<name>.py`` with a
``register(subparsers)`` that adds its parser and sets ``func``.  Command
modules import nothing heavy at module level: TensorFlow is loaded only by
the subcommand that runs, so ``--help`` is instant.
"""

import argparse
import importlib
import sys

from cln_textgen import __version__
from cln_textgen.errors import UserError

COMMANDS = ("prepare", "train", "pretrain", "generate", "classifier", "evaluate", "serve", "export", "runs",
            "show")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cln-textgen",
        description="Train label-conditioned text generators (BERT with Conditional "
                    "LayerNorm) and generate text for a chosen label.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cln_textgen.commands.{name}").register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from cln_textgen.training.interrupts import exit_code, terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM (job schedulers) behaves as Ctrl-C
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"cln-textgen {args.command}: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt as e:  # before or after training: nothing to save, no traceback
        print(f"cln-textgen {args.command}: interrupted", file=sys.stderr)
        return exit_code(e)
