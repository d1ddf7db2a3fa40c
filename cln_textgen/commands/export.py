"""``cln-textgen export``: a run as a TensorFlow SavedModel that needs only TensorFlow."""

import json

from cln_textgen.commands import add_checkpoint_arg, say


def register(sub):
    p = sub.add_parser(
        "export", help="write a run as a TensorFlow SavedModel (for TensorFlow Serving)",
        description="Write a trained run as a TensorFlow SavedModel with the signatures "
                    "generate (the decoding loop, sampling and detokenisation in the graph), "
                    "score and info; it loads with TensorFlow alone. The export goes into "
                    "OUT/1, or the next free number if OUT already holds versions (TensorFlow "
                    "Serving serves the highest), written to a temporary folder first.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the model's base folder (created if missing)")
    add_checkpoint_arg(p)
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.export.savedmodel import export_run

    folder, info = export_run(args.run, args.out, args.checkpoint)
    say(f"exported {args.run} (step {info['step']}) to {folder}")
    say(json.dumps(info, ensure_ascii=False, indent=2, sort_keys=True))
    return 0
