"""``cln-textgen pretrain``: masked-LM pretraining of a BERT on raw text, or resume it."""

import sys
import time

from cln_textgen.commands import add_training_args, say, training_config, training_stopped


def register(sub):
    p = sub.add_parser("pretrain", help="pretrain a BERT on raw text (masked LM), or resume it",
                       description="Continue pretraining a BERT on your own text (model.pretrained) "
                                   "or pretrain a new one (model.vocab and a shape), with the "
                                   "training loop of train: same run folder = resume. When "
                                   "training ends, RUN_DIR/bert is a Google BERT folder to use "
                                   "as model.pretrained. See configs/pretrain_zh_mini.yaml.")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.pretrain_config import load_pretrain_config

    config = training_config(args, load_pretrain_config, "configs/pretrain_zh_mini.yaml")
    if config is None:
        return 0

    from cln_textgen.tasks.pretrain_start import start_pretraining

    started = time.time()
    task = start_pretraining(config, args.config or "--set", fresh=args.fresh)
    try:
        return _pretrain(args, task, started)
    finally:
        if task.lock is not None:
            task.lock.release()


def _pretrain(args, task, started):
    from cln_textgen.tasks.bert_folder import write_bert_folder
    from cln_textgen.training.plots import try_plot_losses
    from cln_textgen.training.trainer import (SaveFailed, Trainer, TrainingDiverged,
                                              TrainingInterrupted)

    run_dir, corpus = task.run, task.corpus
    if task.moved_to:
        say(f"--fresh: moved the previous folder to {task.moved_to}")
    say(f"run folder: {run_dir.path}")
    say(f"corpus: {corpus['train_texts']} texts -> {corpus['rows']} rows of "
        f"{task.config.data.max_length} tokens ({corpus['density']:.1%} real tokens); held out: "
        + (", ".join(f"{name} {h['pieces']} pieces" for name, h in corpus["held_out"].items())
           or "none"))
    trainer = Trainer(task, console=say, progress=not args.no_progress)
    restored = trainer.restore_or_warm_start()
    if restored:
        say(f"resuming from {restored}: step {trainer.step}")
        if trainer.completion():
            if run_dir.bert.is_dir():
                say(f"this run is complete ({trainer.step} steps): {trainer.completion()}; its "
                    f"BERT is {run_dir.bert}; raise train.epochs or train.max_steps to train "
                    "longer")
                return 0
    else:
        m = task.model_config
        start = (f"continuing {task.pretrained.directory}" if task.pretrained else
                 f"a new BERT ({task.config.model.local_heads} local heads)")
        say(f"new run, {start}: {m.num_hidden_layers} layers x {m.hidden_size}, vocabulary "
            f"{m.vocab_size}, {trainer.total_steps} steps planned")
    try:
        status = trainer.fit(stop_at_step=args.stop_at_step)
    except (TrainingInterrupted, TrainingDiverged, SaveFailed) as e:
        return training_stopped(e, "pretrain")
    finally:
        if trainer.chief and run_dir.metrics.is_file():
            try_plot_losses(run_dir.metrics, run_dir.plot, title=str(run_dir.path),
                            warn=lambda text: print(text, file=sys.stderr))
    minutes = (time.time() - started) / 60
    say(f"{status}: {trainer.step} steps in {minutes:.1f} min")
    if trainer.completion() and trainer.chief:
        folder = write_bert_folder(task, trainer.model, trainer.step, trainer.total_steps)
        say(f"wrote {folder} (Google BERT format, model card README.md): use it as "
            f"model.pretrained")
    return 0
