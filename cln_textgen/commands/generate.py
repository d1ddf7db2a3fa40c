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

    from cln_textgen.inference import TextGenerator

    generator = TextGenerator.from_run(args.run, args.checkpoint)
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
