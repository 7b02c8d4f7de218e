"""Quiet by default: a run prints its own progress and summary, not its libraries' start-up.

TensorFlow's C++ start-up lines (oneDNN, CUDA drivers, cpu_feature_guard, cuInit),
absl's, tf.Transform's schema dumps and Beam's chatter go away unless the run is verbose
(``FACEPIPE_VERBOSE=1``; ``python -m pipelines.demo --verbose`` sets it for its stages).
Beam-free and TensorFlow-free: each entry point calls :func:`configure` and then
:func:`preload` ("tensorflow") before anything else imports TensorFlow, because TF reads
``TF_CPP_MIN_LOG_LEVEL`` once, at import, and some of its libraries (the CUDA stub's
"Could not find cuda drivers") write to stderr at load time whatever that variable says.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "FACEPIPE_VERBOSE"
# Libraries whose INFO logs and warnings are start-up noise to a user of facepipe.
NOISY_LOGGERS = ("tensorflow", "tensorflow_transform", "tfx_bsl", "apache_beam", "absl", "keras_tuner", "h5py")
NOISY_MODULES = r"(tensorflow|tensorflow_transform|tfx_bsl|tensorflow_metadata|apache_beam|keras|absl|google)(\..*)?"


def verbose_requested() -> bool:
    """Whether the environment asks for the libraries' full output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure(verbose: bool | None = None) -> bool:
    """Silences the known noisy libraries unless ``verbose`` (default: from the environment).

    Idempotent; returns the verbosity used. Sets the environment too, so that the
    processes this one starts (the demo's stages) are as quiet or verbose as it is.
    """
    verbose = verbose_requested() if verbose is None else verbose
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return True
    os.environ[VERBOSE_ENV] = "0"
    # 3: C++ errors too (a machine without a GPU logs cuInit failures as errors); a value
    # the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # TensorFlow's warnings in a run are tf.function retracing notes, each printed twice.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=NOISY_MODULES)
    try:
        from absl import logging as absl_logging  # absl-py: pure Python, no TensorFlow.
    except ImportError:
        return False
    absl_logging.set_verbosity(absl_logging.ERROR)
    return False


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """Sends what C/C++ code writes to file descriptor 2 to /dev/null meanwhile.

    Python's own errors still show: an exception leaves the block (stderr restored)
    before it is printed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def preload(*modules: str) -> None:
    """Imports ``modules`` now, their native start-up lines hidden unless verbose."""
    context = contextlib.nullcontext() if verbose_requested() else _native_stderr_hidden()
    with context:
        for name in modules:
            importlib.import_module(name)


class StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is when a record is logged.

    ``logging.basicConfig`` binds the stream once: when a caller swaps ``sys.stderr`` (a test's
    capture, a command run in-process twice) later records would go to a closed stream.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass
