"""The one place that prepares TensorFlow/Keras for bert4keras.

bert4keras chooses between standalone Keras and tf.keras from environment
variables it reads when first imported, and on TensorFlow 2.16+ it needs the
legacy Keras 2 (``tf_keras``).  Both must be set before the first
``import tensorflow`` in the process, so every module of this package that
needs TensorFlow or bert4keras imports them from here (``tf``, ``keras``,
``bert4keras``), and this is the only module with work done at import time.
"""

import os
import sys

from cln_textgen.errors import UserError

# The versions this package is built for, and the command that installs each:
# bert4keras declares keras<=2.3.1, which nothing current satisfies, hence --no-deps.
REQUIRED = {
    "tensorflow": ("2.21.", "pip install 'tensorflow>=2.21,<2.22'"),
    "tf_keras": ("2.21.", "pip install 'tf_keras>=2.21,<2.22'"),
    "bert4keras": ("0.11.5", "pip install --no-deps bert4keras==0.11.5"),
    "distutils": ("", "pip install setuptools"),  # bert4keras imports it; gone in Python 3.12
}

os.environ["TF_KERAS"] = "1"
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_quietly():
    # TensorFlow's C++ runtime prints start-up notices (oneDNN, missing CUDA)
    # straight to file descriptor 2 before any log level applies; they are
    # noise on every command, so that descriptor is muted for the import only.
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        saved = None
    if saved is not None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        import tensorflow
        import tf_keras
        import bert4keras.backend
        import bert4keras.layers
        import bert4keras.models
        import bert4keras.snippets
        import bert4keras.tokenizers

        # Device discovery prints its own notices (no CUDA driver, say) on the
        # first operation; doing it here keeps them muted as well.
        tensorflow.config.list_physical_devices()
    except ModuleNotFoundError as e:
        package = (e.name or "").split(".")[0]
        if package not in REQUIRED:
            raise
        raise UserError(f"the Python package {package} is missing; install it with: "
                        f"{REQUIRED[package][1]}") from None
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    for module in (tensorflow, tf_keras, bert4keras):
        version, command = REQUIRED[module.__name__]
        if not module.__version__.startswith(version):
            raise UserError(f"{module.__name__} {module.__version__} is installed, this package "
                            f"needs {version.rstrip('.')}; install it with: {command}")
    return tensorflow, bert4keras


tf, bert4keras = _import_quietly()
keras = bert4keras.backend.keras  # the tf_keras module bert4keras itself uses
tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras", "bert4keras"]
