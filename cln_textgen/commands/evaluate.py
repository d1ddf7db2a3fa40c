"""``cln-textgen evaluate``: how well the label controls the text, and how good it is."""

from cln_textgen import options as table
from cln_textgen.commands import say
from cln_textgen.errors import UserError


def register(sub):
    p = sub.add_parser(
        "evaluate", help="measure label control, fluency, diversity and memorisation of a run",
        description="Generate N texts per label and score them next to real text of the "
                    "same label: label accuracy by an independent classifier (cln-textgen "
                    "classifier train), perplexity under an unconditional baseline run, "
                    "Distinct-1/2/3 and Self-BLEU, copies of training text, lengths. Writes "
                    "evaluation/<time>/report.json, report.md and report.png into the run.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--classifier", metavar="DIR",
                   help="the trained classifier (default: <run>-classifier)")
    p.add_argument("--baseline-run", metavar="DIR",
                   help="a run trained like this one with --set model.conditional=false; "
                        "without it the perplexity figures are left out")
    p.add_argument("-n", type=int, default=100, help="texts per label (default 100)")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="the run's split that gives the real texts (default test)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="checkpoint of the run and of the baseline (default best)")
    p.add_argument("--samples", type=int, default=5,
                   help="generated texts per label shown in report.md (default 5)")
    p.add_argument("--negative-label", metavar="NAME",
                   help="with --guidance above 1: guide away from this label instead of the "
                        "null condition")
    # The generation options (beams and greedy left out: evaluation samples).
    # --seed also draws the real texts; --batch-size also bounds scoring.
    # Lists sweep: every combination is one setting, all from one loaded model.
    table.add_flags(p, evaluate=True)
    p.set_defaults(func=run)


def run(args):
    for flag, value, low in (("-n", args.n, 1), ("--samples", args.samples, 0)):
        if value < low:
            raise UserError(f"{flag}: must be at least {low}, got {value}")
    sweep = table.sweep(table.from_flags(args, evaluate=True))
    for overrides in sweep:  # the flags' own rules, before the run is read
        table.resolve(table.GenerationOptions(), overrides, spell=table.as_flag)

    from cln_textgen.evaluation.report import summary_lines, sweep_lines
    from cln_textgen.evaluation.evaluate import EvalSettings, evaluate

    settings = EvalSettings(
        run=args.run, classifier=args.classifier, baseline_run=args.baseline_run, n=args.n,
        split=args.split, checkpoint=args.checkpoint, samples=args.samples, sweep=sweep,
        negative_label=args.negative_label)
    reports, folder = evaluate(settings, say=say)
    say()
    if len(reports) == 1:
        for line in summary_lines(reports[0]):
            say(line)
        say(f"report: {folder}/report.md (figures: report.json, plot: report.png)")
    else:
        for line in sweep_lines(reports):
            say(line)
        say(f"report: {folder}/sweep.md (trade-off: tradeoff.png; each setting in "
            "setting-N/)")
    return 0
