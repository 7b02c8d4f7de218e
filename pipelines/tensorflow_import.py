"""TensorFlow for the preprocessing job, without the Keras it would load for nothing.

``import tensorflow`` ends by importing ``keras.src.optimizers`` "eagerly" (TensorFlow's own
comment: so that Keras' load-time registrations happen), which imports the whole of Keras 3
and, through it, scikit-learn: about 2.5 s of a ~9.5 s import on the 2-core machine
(docs/benchmarks.md section 1). The preprocessing job never builds a Keras model (tf.Transform
asks for its Keras 2, ``tf_keras``, itself), and TensorFlow wraps that import in ``except
ImportError: pass``; so the job marks the module as missing while it imports TensorFlow.
Nothing stays patched: Keras 3 is imported as usual by the first code that asks for it (the
trainer, a test in the same process).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

_EAGER_KERAS = "keras.src.optimizers"


@contextlib.contextmanager
def without_eager_keras() -> Iterator[None]:
    """TensorFlow imported in this block for the first time does not import Keras 3 with it."""
    skip = "tensorflow" not in sys.modules and _EAGER_KERAS not in sys.modules
    if skip:
        sys.modules[_EAGER_KERAS] = None  # importing it raises ImportError, which TensorFlow passes
    try:
        yield
    finally:
        if skip and _EAGER_KERAS in sys.modules and sys.modules[_EAGER_KERAS] is None:
            del sys.modules[_EAGER_KERAS]
