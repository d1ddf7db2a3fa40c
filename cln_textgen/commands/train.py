"""``cln-textgen train``: train a run from a config, or resume it."""

import sys
import time

from cln_textgen.commands import add_training_args, say, training_config, training_stopped


def register(sub):
    p = sub.add_parser("train", help="train (or resume) a run from a YAML config",
                       description="Train into run_dir. If run_dir already holds checkpoints, "
                                   "training resumes from the newest one that reads back; a "
                                   "run folder is never deleted or overwritten.")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.config import load_config

    config = training_config(args, load_config, "configs/tiny.yaml")
    if config is None:
        return 0
    source = args.config or "--set"

    from cln_textgen.training.distribute import chief_by_tf_config
    from cln_textgen.tasks.lm_start import start_run

    started = time.time()
    chief = chief_by_tf_config(config.train.distribute)
    report = say if chief else (lambda text="": None)  # other workers stay quiet
    setup = start_run(config, source, writes=chief, fresh=args.fresh)
    try:
        return _train(args, setup, chief, report, started)
    finally:
        if setup.lock is not None:
            setup.lock.release()  # the process ending would too; tests call main() repeatedly


def _train(args, setup, chief, report, started):
    from cln_textgen.training.plots import try_plot_losses
    from cln_textgen.training.trainer import (SaveFailed, Trainer, TrainingDiverged,
                                              TrainingInterrupted)

    run_dir = setup.run
    if setup.moved_to:
        report(f"--fresh: moved the previous folder to {setup.moved_to}")
    report(f"run folder: {run_dir.path}")
    report(setup.train.describe())
    if setup.valid is not None:
        report(setup.valid.describe())
    report(f"labels: {', '.join(setup.labels)}")
    trainer = Trainer(setup, console=say, progress=not args.no_progress)
    restored = trainer.restore_or_warm_start()
    if restored:
        report(f"resuming from {restored}: step {trainer.step}, epoch "
               f"{int(trainer.epoch.numpy()) + 1}, batch {int(trainer.batch.numpy())}")
        if trainer.completion():
            report(f"this run is complete ({trainer.step} steps): {trainer.completion()}; raise "
                   "train.epochs, train.max_steps or train.patience to train longer")
            return 0
    else:
        report(f"new run from {setup.pretrained.directory} ({setup.pretrained.format} format): "
               f"{setup.model_config.num_hidden_layers} layers x {setup.model_config.hidden_size}, "
               f"{trainer.total_steps} steps planned")
        report(setup.describe_warm_start())
    try:
        status = trainer.fit(stop_at_step=args.stop_at_step)
    except (TrainingInterrupted, TrainingDiverged, SaveFailed) as e:
        return training_stopped(e, "train", report)
    finally:
        if chief and run_dir.metrics.is_file():
            try_plot_losses(run_dir.metrics, run_dir.plot, title=str(run_dir.path),
                            warn=lambda text: print(text, file=sys.stderr))
    minutes = (time.time() - started) / 60
    best = float(trainer.best.numpy())
    best_text = f", best valid loss {best:.4f}" if best != float("inf") else ""
    report(f"{status}: {trainer.step} steps in {minutes:.1f} min{best_text}")
    report(f"run folder: {run_dir.path} (checkpoints/, metrics.jsonl, samples/, loss.png)")
    return 0
