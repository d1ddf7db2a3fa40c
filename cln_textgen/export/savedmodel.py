"""Writing a run as a versioned TensorFlow SavedModel: ``OUT/1``, ``OUT/2``, ...

TensorFlow Serving watches a model's base folder and serves its highest
numbered version, so an export never overwrites one: it takes the next free
number.  It is written into a hidden temporary folder inside ``OUT`` (whose
name is not a number, so a server never loads it) and renamed to its number
only once complete; a failed export removes its temporary folder.
"""

import dataclasses
import datetime
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from cln_textgen import __version__
from cln_textgen.errors import UserError
from cln_textgen.runs.restore import checkpoint_step, load_model, resolve_checkpoint
from cln_textgen.runs.files import fsync_dir, fsync_files
from cln_textgen.runs.folder import open_run

INFO_ASSET = "cln_textgen_export.json"


def check_out_dir(out):
    """``out`` as a folder an export can go into (created if missing)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder (the export goes into "
                        f"{out}/1, or the next free number)")
    return out


def versions(out):
    """The numbered versions already in ``out``, ascending."""
    if not out.is_dir():
        return []
    return sorted(int(p.name) for p in out.iterdir() if re.fullmatch(r"\d+", p.name))


def describe(run, checkpoint, labels, tokenizer, model_config):
    """What the export records: its ``info`` signature and asset, with the
    run's ``generate:`` defaults (a client fills the inputs it leaves unset
    from them, as the CLI does)."""
    from cln_textgen.backend import tf

    return {
        "format": "cln_textgen SavedModel 2",
        "package_version": __version__,
        "tensorflow_version": tf.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path.resolve()),
        "checkpoint": str(Path(checkpoint).resolve()),
        "step": checkpoint_step(checkpoint),
        "labels": {name: i for i, name in enumerate(labels)},
        "null_condition": model_config.null_id is not None,
        "generate_defaults": dataclasses.asdict(run.read_config().generate),
        "vocab_size": tokenizer.vocab_size,
        "vocab_sha256": hashlib.sha256(run.vocab.read_bytes()).hexdigest(),
        "special_ids": {"cls": tokenizer.cls_id, "sep": tokenizer.sep_id,
                        "pad": tokenizer.pad_id, "unk": tokenizer.unk_id},
    }


def export_run(run_dir, out, checkpoint="best"):
    """Export ``run_dir`` into the next version folder of ``out``; returns
    ``(version_folder, info)``.  Paths and the checkpoint are checked before
    TensorFlow builds anything."""
    out = check_out_dir(out)
    run = open_run(run_dir)
    labels = run.read_labels()
    resolve_checkpoint(run, checkpoint)  # fails fast: building the model takes seconds
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror})") from None

    from cln_textgen.backend import tf
    from cln_textgen.export.graph import ExportedGenerator
    from cln_textgen.model.tokenization import TextTokenizer

    model, model_config, path = load_model(run, checkpoint)
    tokenizer = TextTokenizer.from_file(run.vocab, run.read_config().model.lower_case)
    info = describe(run, path, labels, tokenizer, model_config)
    module = ExportedGenerator(model, tokenizer, labels, model_config.null_id, info)
    temporary = Path(tempfile.mkdtemp(prefix=".export-", suffix=".tmp", dir=out))
    try:
        tf.saved_model.save(module, str(temporary), signatures=module.signatures())
        (temporary / "assets").mkdir(exist_ok=True)
        (temporary / "assets" / INFO_ASSET).write_text(module.info_json + "\n", encoding="utf-8")
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's folder is private
        fsync_files([p for p in temporary.rglob("*") if p.is_file()])
        return _publish(temporary, out), info
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _publish(temporary, out):
    """Rename the finished export to the next free version number."""
    for _ in range(100):  # another exporter may take a number first
        target = out / str((versions(out) or [0])[-1] + 1)
        try:
            os.rename(temporary, target)  # fails on an existing non-empty folder
        except OSError:
            if target.exists():
                continue
            raise
        fsync_dir(out)
        return target
    raise UserError(f"--out {out}: found no free version number; remove old versions")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
