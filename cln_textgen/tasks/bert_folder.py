"""What a pretraining run leaves: a Google BERT checkpoint folder and its card.

``RUN/bert/`` holds ``bert_config.json``, ``vocab.txt``, ``bert_model.ckpt.*``
(Google's variable names, MLM head included), ``metrics.json`` and a model card
``README.md`` made from the run's figures with the template ``model_card.md``
beside this module.  The folder is written under a temporary name, read back
through the package's own loader (every weight must equal the trained one) and
only then renamed, so ``bert/`` is always whole.
"""

import json
import os
import platform
import shutil
import string
from importlib import resources
from pathlib import Path

import numpy as np

from cln_textgen.data.text_corpus import HELD_OUT_MASK_SEED
from cln_textgen.model.bert_weights import google_variables
from cln_textgen.model.pretrained import open_pretrained, write_google_checkpoint
from cln_textgen.model.pretraining import INITIALIZER_RANGE, neighbour_offsets
from cln_textgen.runs.files import fsync_files, write_text_atomic
from cln_textgen.training.log import read_events

CHECKPOINT = "bert_model.ckpt"
FINE_TUNING_DROPOUT = 0.1  # written into bert_config.json for whoever fine-tunes (Google's)


def bert_config(model_config):
    m = model_config
    return {"vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
            "num_hidden_layers": m.num_hidden_layers,
            "num_attention_heads": m.num_attention_heads,
            "intermediate_size": m.intermediate_size, "hidden_act": m.hidden_act,
            "hidden_dropout_prob": FINE_TUNING_DROPOUT,
            "attention_probs_dropout_prob": FINE_TUNING_DROPOUT,
            "max_position_embeddings": m.max_position, "type_vocab_size": m.type_vocab_size,
            "initializer_range": INITIALIZER_RANGE, "layer_norm_eps": m.layer_norm_eps}


def write_bert_folder(task, model, step, planned_steps):
    """Write ``task.run.bert`` from ``model`` at optimizer step ``step`` (of a plan
    of ``planned_steps``); returns it."""
    run = task.run
    tmp = run.path / ".bert.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copyfile(run.vocab, tmp / "vocab.txt")
    (tmp / "bert_config.json").write_text(
        json.dumps(bert_config(task.model_config), indent=2) + "\n", encoding="utf-8")
    values = google_variables(model)
    write_google_checkpoint(values, tmp / CHECKPOINT)
    back = open_pretrained(tmp, "google").variables()
    if back.keys() != values.keys() or any(not np.array_equal(back[k], v)
                                           for k, v in values.items()):
        raise RuntimeError(f"{tmp}: the written checkpoint does not read back as trained")
    figures = _figures(task, model, step, tmp)
    figures["warmup_steps"] = round(task.config.train.warmup_ratio * planned_steps)
    (tmp / "metrics.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    write_text_atomic(tmp / "README.md", model_card(figures), fsync=False)
    fsync_files([str(p) for p in tmp.iterdir()])
    old = run.path / ".bert.replaced"
    if run.bert.exists():  # a run trained further: its new weights replace the old folder
        shutil.rmtree(old, ignore_errors=True)
        os.rename(run.bert, old)
    os.rename(tmp, run.bert)
    shutil.rmtree(old, ignore_errors=True)
    return run.bert


def _figures(task, model, step, folder):
    """What the card reports: the run's settings, data, evaluations and time."""
    c, m = task.config, task.model_config
    events = [e for _, e in read_events(task.run.metrics)] if task.run.metrics.is_file() else []
    evals = [e for e in events if e.get("event") == "eval" and e.get("step", 0) <= step]
    train = [e for e in events if e.get("event") == "train" and e.get("step", 0) <= step]
    times = [e["time"] for e in events if "time" in e]
    # Time spent in the run: gaps over 10 minutes are pauses between sittings.
    seconds = sum(b - a for a, b in zip(times, times[1:]) if b - a < 600)
    return {
        "origin": c.model.pretrained or None, "run": str(task.run.path), "step": step,
        "model": {**bert_config(m), "parameters": int(sum(np.prod(w.shape)
                                                         for w in model.trainable_weights)),
                  "weights_mb": round(sum(p.stat().st_size for p in folder.glob(CHECKPOINT + ".*"))
                                      / 2**20, 2)},
        "config": c.to_dict(), "corpus": task.corpus,
        "held_out": evals[-1]["held_out"] if evals else {},
        "history": [{"step": e["step"], "held_out": e["held_out"]} for e in evals],
        "final_train_loss": (round(float(np.mean([e["loss"] for e in train[-10:]])), 4)
                             if train else None),
        "train_minutes": round(seconds / 60, 1), "machine": describe_machine(),
    }


def describe_machine():
    from cln_textgen.backend import tf

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.machine()} ({model}) with {os.cpu_count()} cores"
            f"{f', {len(gpus)} GPU(s)' if gpus else ', CPU only'}; TensorFlow {tf.__version__}")


def model_card(f):
    """The card's text: ``model_card.md`` filled with the figures ``f``."""
    c, m, corpus = f["config"], f["model"], f["corpus"]
    held = f["held_out"]
    masked = [name for name in held if not name.endswith(" left to right")]
    left = [name for name in held if name.endswith(" left to right")]

    def row(name):
        s = held[name]
        return f"| {name} | {s['tokens']} | {s['loss']} | {s['accuracy']:.1%} |"

    names = [n for n in masked if n != "all"] + ["all"] * ("all" in held)
    history = [f"| {h['step']} | " + " | ".join(
        f"{h['held_out'][n]['loss']} | {h['held_out'][n]['accuracy']:.1%}" for n in names) + " |"
        for h in f["history"]]
    t, d = c["train"], c["data"]
    steps, rows = f["step"], corpus["rows"]
    local = c["model"]["local_heads"]
    template = string.Template(
        resources.files("cln_textgen.tasks").joinpath("model_card.md").read_text("utf-8"))
    return template.substitute(
        layers=m["num_hidden_layers"], hidden=m["hidden_size"], heads=m["num_attention_heads"],
        intermediate=m["intermediate_size"], parameters=f"{m['parameters']:,}",
        weights_mb=m["weights_mb"], vocab_size=m["vocab_size"], run=f["run"],
        origin=(f"continued from `{f['origin']}`" if f["origin"] else "trained from scratch"),
        piece=d["max_length"] - 2, mask_seed=HELD_OUT_MASK_SEED,
        held_out_rows="\n".join(row(n) for n in names),
        left_to_right=("Left to right (lower-triangular attention, each position naming the "
                       "next token): " + "; ".join(
                           f"{n.removesuffix(' left to right')}: loss {held[n]['loss']}, accuracy "
                           f"{held[n]['accuracy']:.1%} over {held[n]['tokens']} targets"
                           for n in left) + ".") if left else "",
        steps=steps, batch_size=t["batch_size"], max_length=d["max_length"],
        epochs=f"{steps * t['batch_size'] / max(rows, 1):.1f}", rows=rows,
        density=f"{corpus['density']:.1%}", mask_rate=f"{d['mask_rate']:.0%}",
        lm_rows=(f"{round(d['lm_share'] * t['batch_size'])} of the {t['batch_size']} rows of "
                 "every batch were left-to-right rows instead: unmasked, one segment, a "
                 "lower-triangular attention mask, every next token a target through the same "
                 "MLM head; the loss is the mean over masked targets plus the mean over "
                 "next-token targets. ") if d["lm_share"] else "Every row was a masked row. ",
        local_heads=(f"The first {local} attention heads of every layer started out looking at "
                     "a neighbour (offsets " + ", ".join(f"{o:+d}" for o in
                                                        neighbour_offsets(local))
                     + "; `model.local_heads`).") if local else "",
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"],
        adam_epsilon=t["adam_epsilon"],
        warmup_steps=f["warmup_steps"],
        clip_norm=t["clip_norm"], dropout=c["model"]["dropout"], seed=t["seed"],
        minutes=f["train_minutes"], machine=f["machine"],
        corpus_rows="\n".join(f"| `{path}` | {corpus['texts'][f'corpus[{i}]']} | "
                              f"{corpus['file_tokens'][f'corpus[{i}]']} |"
                              for i, path in enumerate(d["corpus"]))
        + f"\n| all training texts | {corpus['train_texts']} | {corpus['train_tokens']} |",
        held_out_sources=(", ".join(f"`{p}`" for p in d["held_out"]) if d["held_out"] else
                          f"{d['held_out_fraction']:.0%} of the corpus texts, chosen by a hash "
                          "of each text"),
        history_header=" | ".join(f"{n} loss | {n} acc" for n in names),
        history_rule="---|" * (2 * len(names)),
        history_rows="\n".join(history))
