"""``cln-textgen classifier train``: the independent judge that ``evaluate`` uses."""

from cln_textgen.commands import add_config_args, say, training_stopped
from cln_textgen.errors import UserError


def register(sub):
    p = sub.add_parser("classifier", help="train the label classifier that evaluate uses",
                       description="A plain BERT classifier (no Conditional LayerNorm) from the "
                                   "run's pretrained BERT, trained on the run's data.")
    p.set_defaults(func=_no_action)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    t = actions.add_parser(
        "train", help="fine-tune the classifier on a run's config",
        description="Fine-tune a BERT classifier on data.train of the config (the run's "
                    "config: same pretrained BERT, same labels) with the generator's training "
                    "loop, keep the checkpoint with the lowest loss on data.valid, and report "
                    "its accuracy on data.test. Run it again on the same --out to resume. "
                    "The learning rate and epochs come from the classifier section, the other "
                    "training settings from the train section (override them with --set, "
                    "e.g. --set classifier.learning_rate=2e-5).")
    add_config_args(t)
    t.add_argument("--out", metavar="DIR",
                   help="folder for the classifier (default: <run_dir>-classifier, where "
                        "evaluate looks for it)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    t.set_defaults(func=run_train)


def _no_action(args):
    raise UserError("classifier: give an action, e.g. cln-textgen classifier train "
                    "--config runs/demo/config.yaml")


def run_train(args):
    from cln_textgen.config import load_config

    if args.config is None and not args.overrides:
        raise UserError("--config: give the run's YAML config, e.g. --config runs/demo/config.yaml")
    config = load_config(args.config, args.overrides)

    from cln_textgen.evaluation.classifier import default_dir
    from cln_textgen.tasks.classifier import train_classifier
    from cln_textgen.runs.lock import lock_folder
    from cln_textgen.training.failures import SaveFailed
    from cln_textgen.training.trainer import TrainingDiverged, TrainingInterrupted

    out = args.out or default_dir(config.run_dir)
    say(f"classifier folder: {out}")
    lock = lock_folder(out, "this classifier")  # one writer at a time
    try:
        report = train_classifier(config, out, say=say, progress=not args.no_progress)
    except (TrainingInterrupted, TrainingDiverged, SaveFailed) as e:
        lock.release()
        return training_stopped(e, "classifier train")
    except BaseException:
        lock.release(remove_created=True)
        raise
    lock.release()
    test = report["test"]
    per_label = ", ".join(f"{k} {v:.4f}" for k, v in test["per_label"].items() if v is not None)
    say(f"test accuracy {test['micro']:.4f}, macro {test['macro']:.4f} ({per_label}) on "
        f"{test['examples']} examples; kept the checkpoint of step {report['kept_step']}, "
        f"{report['steps']} steps in {report['seconds'] / 60:.1f} min")
    say(f"saved to {out}; evaluate a run with: cln-textgen evaluate --run {config.run_dir}"
        + (f" --classifier {out}" if args.out else ""))
    return 0
