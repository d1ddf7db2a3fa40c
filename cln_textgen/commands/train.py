"""``cln-textgen train``: train a run from a config, or resume it."""

import time

from cln_textgen.commands import add_config_args, say, training_stopped
from cln_textgen.errors import UserError


def register(sub):
    p = sub.add_parser("train", help="train (or resume) a run from a YAML config",
                       description="Train into run_dir. If run_dir already holds checkpoints, "
                                   "training resumes from the latest one.")
    add_config_args(p)
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="save and stop once N optimizer steps are done (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--print-config", action="store_true",
                   help="print the merged config (defaults, file, --set) and exit")
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.config import load_config

    if args.config is None and not args.overrides:
        raise UserError("--config: give a YAML config (see configs/), e.g. --config configs/tiny.yaml")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(config.to_yaml())
        return 0
    source = args.config or "--set"

    from cln_textgen.training.distribute import chief_by_tf_config
    from cln_textgen.training.plots import plot_losses
    from cln_textgen.training.start import start_run
    from cln_textgen.training.trainer import Trainer, TrainingDiverged, TrainingInterrupted

    started = time.time()
    chief = chief_by_tf_config(config.train.distribute)
    report = say if chief else (lambda text="": None)  # other workers stay quiet
    setup = start_run(config, source, writes=chief)
    run_dir = setup.run
    report(f"run folder: {run_dir.path}")
    report(setup.train.describe())
    if setup.valid is not None:
        report(setup.valid.describe())
    report(f"labels: {', '.join(setup.labels)}")
    trainer = Trainer(setup, console=say, progress=not args.no_progress)
    restored = trainer.restore_or_warm_start()
    t = config.train
    if restored:
        report(f"resuming from {restored}: step {trainer.step}, epoch "
               f"{int(trainer.epoch.numpy()) + 1}, batch {int(trainer.batch.numpy())}")
        if int(trainer.epoch.numpy()) >= t.epochs or (t.max_steps and trainer.step >= t.max_steps):
            report(f"this run is complete ({trainer.step} steps); raise train.epochs or "
                   "train.max_steps to train longer")
            return 0
    else:
        report(f"new run from {setup.pretrained.directory} ({setup.pretrained.format} format): "
               f"{setup.model_config.num_hidden_layers} layers x {setup.model_config.hidden_size}, "
               f"{trainer.total_steps} steps planned")
        report(setup.describe_warm_start())
    try:
        status = trainer.fit(stop_at_step=args.stop_at_step)
    except (TrainingInterrupted, TrainingDiverged) as e:
        return training_stopped(e, "train", report)
    finally:
        if chief and run_dir.metrics.is_file():
            plot_losses(run_dir.metrics, run_dir.plot, title=str(run_dir.path))
    minutes = (time.time() - started) / 60
    best = float(trainer.best.numpy())
    best_text = f", best valid loss {best:.4f}" if best != float("inf") else ""
    report(f"{status}: {trainer.step} steps in {minutes:.1f} min{best_text}")
    report(f"run folder: {run_dir.path} (checkpoints/, metrics.jsonl, samples/, loss.png)")
    return 0
