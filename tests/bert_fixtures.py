"""Tiny real BERT checkpoints on disk, and an independent numpy BERT forward."""

import json
import math

import numpy as np

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, hidden_act="gelu", max_position_embeddings=32,
            type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            initializer_range=0.02)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("好差很不错的酒店服务房间干净太吵了价格便宜贵书内容喜欢失望推荐")


def vocab_tokens(size):
    tokens = SPECIALS + CHARS
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    return tokens[:size]


def random_bert(config=TINY, seed=0, mlm=True):
    """Google-named float32 weights of a random BERT (LayerNorms not at 1/0)."""
    rng = np.random.default_rng(seed)
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def w(*shape):
        return rng.normal(0, 0.2, shape).astype(np.float32)

    def norm(prefix):
        return {prefix + "/gamma": 1 + w(h), prefix + "/beta": w(h)}

    out = {
        "bert/embeddings/word_embeddings": w(v, h),
        "bert/embeddings/position_embeddings": w(config["max_position_embeddings"], h),
        "bert/embeddings/token_type_embeddings": w(config["type_vocab_size"], h),
        **norm("bert/embeddings/LayerNorm"),
        "bert/pooler/dense/kernel": w(h, h), "bert/pooler/dense/bias": w(h),
    }
    for layer in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{layer}/"
        for name in ("query", "key", "value"):
            out[p + f"attention/self/{name}/kernel"] = w(h, h)
            out[p + f"attention/self/{name}/bias"] = w(h)
        out.update({
            p + "attention/output/dense/kernel": w(h, h), p + "attention/output/dense/bias": w(h),
            **norm(p + "attention/output/LayerNorm"),
            p + "intermediate/dense/kernel": w(h, i), p + "intermediate/dense/bias": w(i),
            p + "output/dense/kernel": w(i, h), p + "output/dense/bias": w(h),
            **norm(p + "output/LayerNorm"),
        })
    if mlm:
        out.update({
            "cls/predictions/transform/dense/kernel": w(h, h),
            "cls/predictions/transform/dense/bias": w(h),
            **norm("cls/predictions/transform/LayerNorm"),
            "cls/predictions/output_bias": w(v),
        })
    return out


def write_vocab(path, size):
    path.write_text("\n".join(vocab_tokens(size)) + "\n", encoding="utf-8")


def write_google_bert(directory, variables, config=TINY):
    from cln_textgen.model.pretrained import write_google_checkpoint

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bert_config.json").write_text(json.dumps(config), encoding="utf-8")
    write_vocab(directory / "vocab.txt", config["vocab_size"])
    write_google_checkpoint(variables, directory / "bert_model.ckpt")
    return directory


def google_to_hf(variables, prefix="bert."):
    """The inverse of the loader's mapping, written independently for tests."""
    out = {}
    for name, value in variables.items():
        if name == "cls/predictions/output_bias":
            out["cls.predictions.bias"] = value
            continue
        if name.startswith("bert/embeddings/") and "LayerNorm" not in name:
            out[prefix + name[5:].replace("/", ".") + ".weight"] = value
            continue
        scope, _, param = name.rpartition("/")
        is_cls = scope.startswith("cls/")
        scope = scope.replace("bert/", "", 1).replace("cls/", "cls.", 1)
        scope = scope.replace("encoder/layer_", "encoder.layer.").replace("/", ".")
        if param == "kernel":
            param, value = "weight", value.T
        elif param == "gamma":
            param = "weight"
        elif param == "beta":
            param = "bias"
        out[("" if is_cls else prefix) + f"{scope}.{param}"] = np.ascontiguousarray(value)
    return out


def write_hf_bert(directory, variables, config=TINY, prefix="bert."):
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    hf_config = {k: v for k, v in config.items() if k != "initializer_range"}
    hf_config.update(model_type="bert", layer_norm_eps=1e-12, architectures=["BertForMaskedLM"])
    (directory / "config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    write_vocab(directory / "vocab.txt", config["vocab_size"])
    save_file(google_to_hf(variables, prefix), str(directory / "model.safetensors"))
    return directory


def numpy_bert_lm(hf, config, token_ids, eps=1e-12, causal=True):
    """Causal (or with ``causal=False`` bidirectional) BERT forward in float64
    straight from HF-named tensors.

    Returns (last hidden states, MLM logits or None).  Written from the BERT
    paper's equations, sharing no code with the package.
    """
    t = {k[5:] if k.startswith("bert.") else k: np.asarray(v, np.float64) for k, v in hf.items()}
    h, heads = config["hidden_size"], config["num_attention_heads"]
    d = h // heads
    n = len(token_ids)

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[p + ".weight"] + t[p + ".bias"]

    def dense(x, p):
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))

    x = (t["embeddings.word_embeddings.weight"][token_ids]
         + t["embeddings.position_embeddings.weight"][:n]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    visible = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        q, k, v = (dense(x, p + f"attention.self.{name}").reshape(n, heads, d).transpose(1, 0, 2)
                   for name in ("query", "key", "value"))
        scores = np.where(visible, q @ k.transpose(0, 2, 1) / math.sqrt(d), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, h)
        x = ln(x + dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        inner = gelu(dense(x, p + "intermediate.dense"))
        x = ln(x + dense(inner, p + "output.dense"), p + "output.LayerNorm")
    if "cls.predictions.bias" not in t:
        return x, None
    y = ln(gelu(dense(x, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
    return x, y @ t["embeddings.word_embeddings.weight"].T + t["cls.predictions.bias"]
