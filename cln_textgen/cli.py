"""The ``cln-textgen`` command.  Parsing imports nothing heavy: TensorFlow is
loaded only by the subcommand that needs it, so ``--help`` is instant."""

import argparse
import json
import sys
import time

from cln_textgen import __version__
from cln_textgen.errors import UserError


def _add_config_args(p):
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.batch_size=16 (repeatable)")


def _parser():
    parser = argparse.ArgumentParser(
        prog="cln-textgen",
        description="Train label-conditioned text generators (BERT with Conditional "
                    "LayerNorm) and generate text for a chosen label.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) a run from a YAML config",
                       description="Train into run_dir. If run_dir already holds checkpoints, "
                                   "training resumes from the latest one.")
    _add_config_args(p)
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="save and stop once N optimizer steps are done (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate text for a label from a trained run")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--label", required=True, help="label name, or 'all' for every label")
    p.add_argument("-n", type=int, default=5, help="samples per label (default 5)")
    p.add_argument("--prompt", default="", help="text every sample starts with")
    p.add_argument("--max-new-tokens", type=int, help="default: the run's generate.max_new_tokens")
    p.add_argument("--min-new-tokens", type=int, help="no [SEP] before this many tokens")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int, help="sample from the k likeliest tokens (0: off)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--repetition-penalty", type=float, help="CTRL-style penalty (1.0: off)")
    p.add_argument("--no-repeat-ngram", type=int, help="forbid repeating n-grams of this size")
    p.add_argument("--num-beams", type=int, help="beam search with this many beams")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token")
    p.add_argument("--seed", type=int, default=0, help="same seed and options -> same texts")
    p.add_argument("--checkpoint", default="best", help="best (default), latest, or a path")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"cln-textgen {args.command}: error: {e}", file=sys.stderr)
        return UserError.exit_code


def _out(text=""):
    print(text, flush=True)


# ---------------------------------------------------------------- train


def cmd_train(args):
    from cln_textgen.config import load_config

    if args.config is None and not args.overrides:
        raise UserError("--config: give a YAML config (see configs/), e.g. --config configs/tiny.yaml")
    config = load_config(args.config, args.overrides)
    source = args.config or "--set"

    from cln_textgen.plots import plot_losses
    from cln_textgen.start import start_run
    from cln_textgen.training import Trainer, TrainingDiverged, TrainingInterrupted

    started = time.time()
    setup = start_run(config, source)
    run = setup.run
    _out(f"run folder: {run.path}")
    _out(setup.train.describe())
    if setup.valid is not None:
        _out(setup.valid.describe())
    _out(f"labels: {', '.join(setup.labels)}")
    trainer = Trainer(setup, console=_out, progress=not args.no_progress)
    restored = trainer.restore_or_warm_start()
    t = config.train
    if restored:
        _out(f"resuming from {restored}: step {trainer.step}, epoch "
             f"{int(trainer.epoch.numpy()) + 1}, batch {int(trainer.batch.numpy())}")
        if int(trainer.epoch.numpy()) >= t.epochs or (t.max_steps and trainer.step >= t.max_steps):
            _out(f"this run is complete ({trainer.step} steps); raise train.epochs or "
                 "train.max_steps to train longer")
            return 0
    else:
        _out(f"new run from {setup.pretrained.directory} ({setup.pretrained.format} format): "
             f"{setup.model_config.num_hidden_layers} layers x {setup.model_config.hidden_size}, "
             f"{trainer.total_steps} steps planned")
    try:
        status = trainer.fit(stop_at_step=args.stop_at_step)
    except TrainingInterrupted as e:
        _out(str(e))
        return 130
    except TrainingDiverged as e:
        print(f"cln-textgen train: error: {e}", file=sys.stderr)
        return 1
    finally:
        plot_losses(run.metrics, run.plot, title=str(run.path)) if run.metrics.is_file() else None
    minutes = (time.time() - started) / 60
    best = float(trainer.best.numpy())
    best_text = f", best valid loss {best:.4f}" if best != float("inf") else ""
    _out(f"{status}: {trainer.step} steps in {minutes:.1f} min{best_text}")
    _out(f"run folder: {run.path} (checkpoints/, metrics.jsonl, samples/, loss.png)")
    return 0


# ---------------------------------------------------------------- generate


def cmd_generate(args):
    if args.n < 1:
        raise UserError("-n: must be at least 1")
    from cln_textgen.inference import TextGenerator

    generator = TextGenerator.from_run(args.run, args.checkpoint)
    options = {
        "max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens,
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty, "no_repeat_ngram": args.no_repeat_ngram,
        "num_beams": args.num_beams,
    }
    options = {k: v for k, v in options.items() if v is not None}
    options.update(greedy=args.greedy, seed=args.seed)
    _check_options(options)
    samples = generator.generate(args.label, n=args.n, prompt=args.prompt, **options)
    if args.format == "jsonl":
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    else:
        text = _readable(samples)
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


def _check_options(options):
    checks = {
        "max_new_tokens": (lambda v: v >= 1, "must be >= 1"),
        "min_new_tokens": (lambda v: v >= 0, "must be >= 0"),
        "temperature": (lambda v: v > 0, "must be > 0"),
        "top_k": (lambda v: v >= 0, "must be >= 0 (0: off)"),
        "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "repetition_penalty": (lambda v: v > 0, "must be > 0 (1.0: off)"),
        "no_repeat_ngram": (lambda v: v >= 0, "must be >= 0 (0: off)"),
        "num_beams": (lambda v: v >= 1, "must be >= 1"),
    }
    for key, value in options.items():
        if key in checks and not checks[key][0](value):
            raise UserError(f"--{key.replace('_', '-')}: {checks[key][1]}, got {value}")


def _readable(samples):
    blocks, current = [], None
    for s in samples:
        if s["label"] != current:
            current = s["label"]
            blocks.append(f"== {current} ==")
        blocks.append(f"- {s['text']}")
    return "\n".join(blocks) + "\n"
