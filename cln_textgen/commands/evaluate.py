"""``cln-textgen evaluate``: how well the label controls the text, and how good it is."""

from cln_textgen.commands import say
from cln_textgen.commands.generate import OPTION_CHECKS
from cln_textgen.errors import UserError

# Sampling options a user may change; beams and greedy decoding are left out:
# they return (nearly) the same text every time, which no diversity figure can judge.
SAMPLING = {
    "max_new_tokens": (int, "default: the run's generate.max_new_tokens"),
    "min_new_tokens": (int, "no [SEP] before this many tokens"),
    "temperature": (float, "default: the run's generate.temperature"),
    "top_k": (int, "sample from the k likeliest tokens (0: off)"),
    "top_p": (float, "nucleus sampling mass (1.0: off)"),
    "repetition_penalty": (float, "CTRL-style penalty (1.0: off)"),
    "no_repeat_ngram": (int, "forbid repeating n-grams of this size"),
}


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
    p.add_argument("--seed", type=int, default=0, help="generation and sampling seed (default 0)")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="the run's split that gives the real texts (default test)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="checkpoint of the run and of the baseline (default best)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="texts generated or scored at once (default 32)")
    p.add_argument("--samples", type=int, default=5,
                   help="generated texts per label shown in report.md (default 5)")
    for key, (kind, text) in SAMPLING.items():
        p.add_argument("--" + key.replace("_", "-"), type=kind, help=text)
    p.set_defaults(func=run)


def run(args):
    for flag, value, low in (("-n", args.n, 1), ("--batch-size", args.batch_size, 1),
                             ("--samples", args.samples, 0)):
        if value < low:
            raise UserError(f"{flag}: must be at least {low}, got {value}")
    options = {key: getattr(args, key) for key in SAMPLING if getattr(args, key) is not None}
    for key, value in options.items():
        ok, rule = OPTION_CHECKS[key]
        if not ok(value):
            raise UserError(f"--{key.replace('_', '-')}: {rule}, got {value}")

    from cln_textgen.evaluation.report import summary_lines
    from cln_textgen.evaluation.evaluate import EvalSettings, evaluate

    settings = EvalSettings(
        run=args.run, classifier=args.classifier, baseline_run=args.baseline_run, n=args.n,
        seed=args.seed, split=args.split, checkpoint=args.checkpoint,
        batch_size=args.batch_size, samples=args.samples, options=options)
    report, folder = evaluate(settings, say=say)
    say()
    for line in summary_lines(report):
        say(line)
    say(f"report: {folder}/report.md (figures: report.json, plot: report.png)")
    return 0
