"""One module per ``cln-textgen`` subcommand (see :mod:`cln_textgen.cli`)."""


def add_config_args(parser):
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.batch_size=16 (repeatable)")


def say(text=""):
    print(text, flush=True)
