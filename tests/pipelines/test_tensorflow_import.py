"""The preprocessing job imports TensorFlow without Keras 3, and leaves Keras importable."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.image_files import write_glasses_like

# In a fresh interpreter: the pytest process has long imported TensorFlow, Keras with it.
_RUN_THEN_IMPORT_KERAS = """
import json, sys
from pipelines import preprocess
manifest = preprocess.run(sys.argv[1:])
loaded = {name: name in sys.modules for name in ("tensorflow", "keras", "sklearn")}
import keras.src.optimizers  # Keras imports as usual afterwards: nothing stayed patched.
print(json.dumps({"loaded": loaded, "written": manifest["counts"]["written_total"], "keras": keras.__version__}))
"""


def test_a_preprocess_run_needs_no_keras_and_leaves_it_importable(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1] * 4)
    argv = ["--images", str(images), "--labels_csv", str(tmp_path / "labels.csv"), "--file_pattern", "face-{id}"]
    argv += ["--output", str(tmp_path / "out"), "--image_size", "8", "--balance", "none"]
    completed = subprocess.run(
        [sys.executable, "-c", _RUN_THEN_IMPORT_KERAS, *argv], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["loaded"] == {"tensorflow": True, "keras": False, "sklearn": False}
    assert report["written"] == 8 and report["keras"].startswith("3.")
