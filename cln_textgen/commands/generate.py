"""``cln-textgen generate``: sample texts for one label, or all, from a run."""

import json
import sys

from cln_textgen.errors import UserError


def register(sub):
    p = sub.add_parser("generate", help="generate text for a label from a trained run")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--label", required=True, metavar="NAME", help="label name, or 'all' for every label")
    p.add_argument("-n", type=int, default=5, help="samples per label (default 5)")
    p.add_argument("--prompt", default="", metavar="TEXT", help="text every sample starts with")
    p.add_argument("--max-new-tokens", type=int, metavar="K", help="default: the run's generate.max_new_tokens")
    p.add_argument("--min-new-tokens", type=int, metavar="K", help="no [SEP] before this many tokens")
    p.add_argument("--temperature", type=float, metavar="T", help="divide logits by T (default 1.0)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample from the k likeliest tokens (0: off)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass (1.0: off)")
    p.add_argument("--repetition-penalty", type=float, metavar="R", help="CTRL-style penalty (1.0: off)")
    p.add_argument("--no-repeat-ngram", type=int, metavar="N", help="forbid repeating n-grams of this size")
    p.add_argument("--num-beams", type=int, metavar="B", help="beam search with this many beams")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="same seed and options -> same texts")
    p.add_argument("--checkpoint", default="best", metavar="WHICH", help="best (default), latest, or a path")
    p.add_argument("--stream", action="store_true",
                   help="print text as it is produced (text format, standard output)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run)


OPTION_CHECKS = {
    "max_new_tokens": (lambda v: v >= 1, "must be >= 1"),
    "min_new_tokens": (lambda v: v >= 0, "must be >= 0"),
    "temperature": (lambda v: v > 0, "must be > 0"),
    "top_k": (lambda v: v >= 0, "must be >= 0 (0: off)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "repetition_penalty": (lambda v: v > 0, "must be > 0 (1.0: off)"),
    "no_repeat_ngram": (lambda v: v >= 0, "must be >= 0 (0: off)"),
    "num_beams": (lambda v: v >= 1, "must be >= 1"),
}


def run(args):
    if args.n < 1:
        raise UserError("-n: must be at least 1")
    options = {key: getattr(args, key) for key in OPTION_CHECKS if getattr(args, key) is not None}
    for key, value in options.items():
        ok, rule = OPTION_CHECKS[key]
        if not ok(value):
            raise UserError(f"--{key.replace('_', '-')}: {rule}, got {value}")
    options.update(greedy=args.greedy, seed=args.seed)

    if args.stream and (args.format != "text" or args.output):
        raise UserError("--stream: prints readable text to the terminal; drop --format jsonl "
                        "and --output, or drop --stream")

    from cln_textgen.generation.generator import TextGenerator

    generator = TextGenerator.from_run(args.run, args.checkpoint)
    if args.stream:
        labels = [generator.labels[i] for i in generator.label_ids(args.label)
                  for _ in range(args.n)]
        printer = OrderedStream(labels, args.prompt)
        generator.generate(args.label, n=args.n, prompt=args.prompt, stream=printer, **options)
        return 0
    samples = generator.generate(args.label, n=args.n, prompt=args.prompt, **options)
    if args.format == "jsonl":
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
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
