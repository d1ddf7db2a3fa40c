"""``cln-textgen generate``: sample texts for one label, or all, from a run."""

import json
import sys
import warnings

from cln_textgen import options as table
from cln_textgen.commands import add_checkpoint_arg
from cln_textgen.errors import UserError


def register(sub):
    p = sub.add_parser(
        "generate", help="generate text for a label from a trained run",
        description="Generate texts for a label from a trained run. Decoding options left "
                    "unset come from the run's generate: section (its config.yaml); "
                    "--show-options lists the values in effect without generating. The "
                    "options in effect and the checkpoint are printed to standard error.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--label", metavar="NAME",
                   help="label name, 'all' for every label, or a mix of labels such as "
                        "positive=0.7,negative=0.3 (weights >= 0 summing to 1: the text is "
                        "conditioned on the weighted mix of their embeddings)")
    p.add_argument("--negative-label", metavar="NAME",
                   help="with --guidance above 1: guide away from this label instead of the "
                        "null condition (the only way for runs trained without "
                        "model.label_dropout)")
    p.add_argument("-n", type=int, metavar="N",
                   help=f"texts per label (default: {table.SAMPLES_DEFAULT} when sampling, "
                        "num_beams with beam search, 1 greedy)")
    p.add_argument("--prompt", default="", metavar="TEXT",
                   help="text every sample starts with; each text is the prompt exactly as "
                        "given, then the continuation")
    table.add_flags(p)
    add_checkpoint_arg(p)
    p.add_argument("--show-options", action="store_true",
                   help="print the options in effect for this run (its generate: section "
                        "and the flags given), then exit")
    p.add_argument("--stream", action="store_true",
                   help="print text as it is produced (text format, standard output)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="jsonl: one object per text with its options, checkpoint, step and run")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run)


def resolve_request(args):
    """The run, its labels and the options in effect, all checked without
    TensorFlow: ``(run, labels, options, n)``."""
    from cln_textgen.generation.conditions import contrast, label_ids
    from cln_textgen.runs.folder import open_run

    run_dir = open_run(args.run)
    labels = run_dir.read_labels()
    options = table.resolve(run_dir.read_config().generate, table.from_flags(args),
                            spell=table.as_flag)
    n = table.default_n(options) if args.n is None else args.n
    problem = table.check_n(n, options, name="-n")
    if problem:
        raise UserError(problem)
    if args.label is not None:
        label_ids(labels, args.label)
    contrast(labels, run_dir.read_model_config().null_id, options.guidance, args.negative_label)
    return run_dir, labels, options, n


def run(args):
    run_dir, labels, options, n = resolve_request(args)
    if args.show_options:
        print(f"# {run_dir.config} generate: section, with the flags given")
        for option in table.OPTIONS:
            print(f"{option.name}: {getattr(options, option.name)}")
        print(f"n: {n}")
        return 0
    if args.label is None:
        raise UserError("--label: give a label name or 'all' (labels of this run: "
                        f"{', '.join(labels)})")
    if args.stream and (args.format != "text" or args.output):
        raise UserError("--stream: prints readable text to the terminal; drop --format jsonl "
                        "and --output, or drop --stream")

    from cln_textgen.generation.generator import TextGenerator
    from cln_textgen.generation.conditions import condition_name
    from cln_textgen.runs.restore import checkpoint_step

    generator = TextGenerator.from_run(args.run, args.checkpoint, label=args.label)
    print(f"options: n={n} {table.describe(options)}", file=sys.stderr)
    print(f"checkpoint: {generator.checkpoint} (step {checkpoint_step(generator.checkpoint)})",
          file=sys.stderr)
    unknown = generator.unknown_characters(args.prompt)
    if unknown:
        print(f"warning: prompt characters {' '.join(unknown)} are not in the run's "
              "vocabulary; the model sees [UNK] there (the text keeps them)", file=sys.stderr)
    overrides = {o.name: getattr(options, o.name) for o in table.OPTIONS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once above, in one line
        if args.stream:
            names = [condition_name(generator.labels, c)
                     for c in generator.label_ids(args.label) for _ in range(n)]
            printer = OrderedStream(names, args.prompt)
            generator.generate(args.label, n=n, prompt=args.prompt, stream=printer,
                               negative_label=args.negative_label, **overrides)
            return 0
        samples = generator.generate(args.label, n=n, prompt=args.prompt,
                                     negative_label=args.negative_label, **overrides)
    if args.format == "jsonl":
        made_with = generator.describe(options, n, args.negative_label)
        text = "".join(json.dumps({**s, **made_with}, ensure_ascii=False) + "\n"
                       for s in samples)
    else:
        text = readable(samples)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"{args.output}: cannot write ({e.strerror})") from None
        print(f"wrote {len(samples)} samples to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def readable(samples):
    """Blocks per label: a ``== label ==`` heading, then one ``- text`` line each."""
    lines, current = [], None
    for s in samples:
        if s["label"] != current:
            current = s["label"]
            lines.append(f"== {current} ==")
        lines.append(f"- {s['text']}")
    return "\n".join(lines) + "\n"


class OrderedStream:
    """Prints streamed samples as ``readable`` does, one after another.

    All rows are decoded at once, so pieces of later rows arrive while an
    earlier one is still being written: the first unfinished row is printed
    live, the others are held until their turn.
    """

    def __init__(self, labels, prompt, write=None):
        self.labels, self.prompt = labels, prompt
        self.write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        self.pieces = [[] for _ in labels]
        self.done = [False] * len(labels)
        self.current = -1
        self._advance()

    def __call__(self, row, piece):
        if piece is None:
            self.done[row] = True
        elif row == self.current:
            self.write(piece)
        else:
            self.pieces[row].append(piece)
        if row == self.current and piece is None:
            self.write("\n")
            self._advance()

    def _advance(self):
        while self.current + 1 < len(self.labels):
            self.current += 1
            row = self.current
            if row == 0 or self.labels[row] != self.labels[row - 1]:
                self.write(f"== {self.labels[row]} ==\n")
            self.write(f"- {self.prompt}" + "".join(self.pieces[row]))
            if not self.done[row]:
                return
            self.write("\n")
