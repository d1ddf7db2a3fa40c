"""Reading a pretrained BERT directory: Google TF checkpoints and HF safetensors.

Both formats end up as the same thing: a Google-style config dict and a
mapping from Google variable names (``bert/encoder/layer_0/...``) to numpy
arrays, which :mod:`cln_textgen.model.modeling` loads through bert4keras's own
variable mapping.  Nothing here builds a model.
"""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from cln_textgen.errors import UserError

FORMATS = ("auto", "google", "hf")
GOOGLE_CONFIG = "bert_config.json"
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
VOCAB = "vocab.txt"
PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


@dataclasses.dataclass
class PretrainedBert:
    """A pretrained BERT found on disk (weights are read on demand)."""

    directory: Path
    format: str
    config: dict  # Google BERT config fields
    vocab_path: Path
    weights_path: Path  # checkpoint prefix (google) or safetensors file (hf)

    def variables(self):
        """All weights as ``{google_name: np.ndarray}``."""
        if self.format == "google":
            return _read_google_checkpoint(self.weights_path)
        return _read_safetensors(self.weights_path)

    def vocab_size(self):
        with open(self.vocab_path, encoding="utf-8") as f:
            return sum(1 for _ in f)


def open_pretrained(directory, fmt="auto"):
    """Find, check and describe the pretrained BERT in ``directory``."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UserError(
            f"{directory}: pretrained BERT directory not found; set model.pretrained to a "
            "folder holding bert_config.json + bert_model.ckpt.* + vocab.txt (Google) or "
            "config.json + model.safetensors + vocab.txt (Hugging Face)"
        )
    if fmt not in FORMATS:
        raise UserError(f"model.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = _detect_format(directory)
    vocab = directory / VOCAB
    if not vocab.is_file():
        raise UserError(f"{vocab}: missing; a BERT directory needs the vocab.txt it was trained with")
    if fmt == "google":
        pretrained = _open_google(directory, vocab)
    else:
        pretrained = _open_hf(directory, vocab)
    _check_vocab_size(pretrained)
    return pretrained


def _detect_format(directory):
    if (directory / GOOGLE_CONFIG).is_file():
        return "google"
    if (directory / HF_WEIGHTS).is_file() or (directory / HF_CONFIG).is_file():
        return "hf"
    pickled = [name for name in PICKLE_WEIGHTS if (directory / name).is_file()]
    if pickled:
        _refuse_pickle(directory / pickled[0])
    raise UserError(
        f"{directory}: neither a Google BERT (bert_config.json + bert_model.ckpt.*) nor a "
        "Hugging Face BERT (config.json + model.safetensors); point model.pretrained at one"
    )


def _refuse_pickle(path):
    raise UserError(
        f"{path}: pickle-based weights are not loaded (they can run code); convert the model "
        "to safetensors, e.g. with transformers: AutoModel.from_pretrained(DIR)"
        ".save_pretrained(DIR, safe_serialization=True)"
    )


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None


_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")


def _normalise_config(path, raw):
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; is this a BERT config?")
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise UserError(f"{path}: model_type {model_type!r} is not supported; only BERT is")
    position = raw.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise UserError(f"{path}: position_embedding_type {position!r} is not supported; "
                        "only 'absolute' (BERT's own) is")
    config = {k: raw[k] for k in _REQUIRED}
    config.update(
        hidden_act=raw.get("hidden_act", "gelu"),
        max_position_embeddings=raw.get("max_position_embeddings", 512),
        type_vocab_size=raw.get("type_vocab_size", 2),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=raw.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=raw.get("attention_probs_dropout_prob", 0.1),
    )
    if raw.get("embedding_size", config["hidden_size"]) != config["hidden_size"]:
        raise UserError(f"{path}: embedding_size differs from hidden_size (an ALBERT-style "
                        "factorised embedding); only BERT is supported")
    return config


def _open_google(directory, vocab):
    config_path = directory / GOOGLE_CONFIG
    if not config_path.is_file():
        raise UserError(f"{config_path}: missing; a Google BERT directory needs it")
    config = _normalise_config(config_path, _read_json(config_path))
    return PretrainedBert(directory, "google", config, vocab, _find_checkpoint(directory))


def _find_checkpoint(directory):
    preferred = directory / "bert_model.ckpt.index"
    if preferred.is_file():
        return directory / "bert_model.ckpt"
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise UserError(f"{directory}: no TensorFlow checkpoint (bert_model.ckpt.index and "
                        "bert_model.ckpt.data-*) found")
    names = ", ".join(p.name for p in indexes)
    raise UserError(f"{directory}: several checkpoints ({names}); keep one, named bert_model.ckpt.*")


def _read_google_checkpoint(prefix):
    from cln_textgen.backend import tf

    try:
        reader = tf.train.load_checkpoint(str(prefix))
        names = reader.get_variable_to_shape_map()
        return {name: reader.get_tensor(name) for name in names}
    except (tf.errors.OpError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{prefix}: unreadable TensorFlow checkpoint ({first})") from None


def _open_hf(directory, vocab):
    config_path = directory / HF_CONFIG
    weights = directory / HF_WEIGHTS
    if not weights.is_file():
        pickled = [name for name in PICKLE_WEIGHTS if (directory / name).is_file()]
        if pickled:
            _refuse_pickle(directory / pickled[0])
        raise UserError(f"{weights}: missing; a Hugging Face BERT directory needs model.safetensors")
    if not config_path.is_file():
        raise UserError(f"{config_path}: missing; a Hugging Face BERT directory needs it")
    config = _normalise_config(config_path, _read_json(config_path))
    return PretrainedBert(directory, "hf", config, vocab, weights)


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e}); float16/float32 BERT "
                        "weights are supported (convert bfloat16 ones to float32)") from None
    return hf_to_google(tensors)


# Hugging Face BERT module paths -> Google BERT variable scopes.
_HF_SCOPES = [
    (r"embeddings\.word_embeddings", "bert/embeddings/word_embeddings"),
    (r"embeddings\.position_embeddings", "bert/embeddings/position_embeddings"),
    (r"embeddings\.token_type_embeddings", "bert/embeddings/token_type_embeddings"),
    (r"embeddings\.LayerNorm", "bert/embeddings/LayerNorm"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)", r"bert/encoder/layer_\1/attention/self/\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", r"bert/encoder/layer_\1/attention/output/dense"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", r"bert/encoder/layer_\1/attention/output/LayerNorm"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"bert/encoder/layer_\1/intermediate/dense"),
    (r"encoder\.layer\.(\d+)\.output\.dense", r"bert/encoder/layer_\1/output/dense"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", r"bert/encoder/layer_\1/output/LayerNorm"),
    (r"pooler\.dense", "bert/pooler/dense"),
    (r"cls\.predictions\.transform\.dense", "cls/predictions/transform/dense"),
    (r"cls\.predictions\.transform\.LayerNorm", "cls/predictions/transform/LayerNorm"),
]
_HF_PARAMS = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta"}
_HF_IGNORED = re.compile(r"(embeddings\.position_ids|cls\.predictions\.decoder\.weight|"
                         r"cls\.seq_relationship\..*)$")


def hf_to_google(tensors):
    """Rename HF BERT tensors to Google names (Linear weights transposed)."""
    out = {}
    for name, value in tensors.items():
        short = name[5:] if name.startswith("bert.") else name
        if _HF_IGNORED.match(short):
            continue
        if short in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
            out["cls/predictions/output_bias"] = value.astype(np.float32)
            continue
        module, _, param = short.rpartition(".")
        for pattern, scope in _HF_SCOPES:
            if re.fullmatch(pattern, module):
                target = re.sub(pattern, scope, module)
                break
        else:
            continue  # heads of other tasks (classifiers...) are not part of BERT
        value = value.astype(np.float32)
        if target.endswith("LayerNorm"):
            param = {"weight": "gamma", "bias": "beta"}.get(param, param)
        elif target.startswith("bert/embeddings/"):
            out[target] = value  # embedding tables are stored as Google stores them
            continue
        elif param == "weight":
            value = value.T  # torch Linear is (out, in); Google/Keras kernels are (in, out)
        out[f"{target}/{_HF_PARAMS.get(param, param)}"] = value
    return out


def _check_vocab_size(pretrained):
    lines = pretrained.vocab_size()
    expected = pretrained.config["vocab_size"]
    if lines != expected:
        name = GOOGLE_CONFIG if pretrained.format == "google" else HF_CONFIG
        raise UserError(
            f"{pretrained.vocab_path}: {lines} tokens, but {name} says vocab_size={expected}; "
            "use the vocab.txt that belongs to these weights"
        )


def write_google_checkpoint(variables, prefix):
    """Write ``{google_name: array}`` as a TF1 checkpoint at ``prefix`` (bert_model.ckpt),
    with the TF1 ``Saver`` that made Google's checkpoints; the ``checkpoint`` file
    names it by a relative path, so the folder can move."""
    from cln_textgen.backend import tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        tf_vars = [v1.Variable(np.asarray(value), name=name) for name, value in variables.items()]
        saver = v1.train.Saver(tf_vars, save_relative_paths=True)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False)
