"""cln_textgen: label-conditioned text generation with Conditional-LayerNorm BERT.

Importing the package is cheap; TensorFlow loads on first use of a name below.
"""

__version__ = "0.1.0"

_LAZY = {
    "ConditionalLayerNormalization": "cln_textgen.model.layers",
    "ModelConfig": "cln_textgen.model.modeling",
    "build_model": "cln_textgen.model.modeling",
    "TextGenerator": "cln_textgen.generation.generator",
    "Config": "cln_textgen.config",
    "load_config": "cln_textgen.config",
    "UserError": "cln_textgen.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cln_textgen' has no attribute {name!r}")
