"""TensorFlow for tf.data only: imported on first use, with every GPU hidden from it.

The digits and synthetic pipelines never call this, so runs on them do not pay TensorFlow's import
(4-7 s, about 670 MB).
"""

import functools


@functools.cache
def tensorflow():
    """The `tensorflow` module, with GPUs made invisible to it (JAX owns the accelerators)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices were initialised before this call.
        if tf.config.get_visible_devices("GPU"):
            raise
    return tf


def dataset_options():
    """tf.data options of every pipeline: deterministic order, autotuned parallelism."""
    tf = tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    return options
