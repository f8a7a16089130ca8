"""The CLI's output: TensorFlow's own log lines and warnings only with -v."""
from __future__ import annotations

import subprocess
import sys

import pytest

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large


def test_tensorflows_own_noise_is_hidden_unless_verbose():
    script = ("import sys; from towerrec.pipelines.cli import quiet_tensorflow; "
              "quiet_tensorflow(sys.argv[1] == 'verbose'); import tensorflow as tf; "
              "tf.get_logger().warning('tensorflow says %s', 'hello')")
    said = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                                 text=True, timeout=300).stderr
            for mode in ("quiet", "verbose")}
    assert "tensorflow says hello" in said["verbose"]
    assert "tensorflow says hello" not in said["quiet"], said["quiet"]
    assert not [line for line in said["quiet"].splitlines() if line.strip()], said["quiet"]
