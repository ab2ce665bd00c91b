"""Import TensorFlow without its C++ start-up chatter.

TensorFlow's native code logs before absl's logging is initialised, so TF_CPP_MIN_LOG_LEVEL
does not reach the first lines ("All log messages before absl::InitializeLog() …",
"oneDNN custom operations are on …"): they are written to file descriptor 2 during the import.
So the import runs with fd 2 pointed at a temporary file, and afterwards every captured line
that is not one of those is written back to stderr: a Python warning or an import error stays
visible. With TF_CPP_MIN_LOG_LEVEL=0 (`pipeline.py --verbose`) nothing is filtered.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# An absl-formatted native log line (I0000 00:00:…  port.cc:153] …) or the lines TF prints around them.
_NATIVE_LOG = re.compile(rb"^(?:[IWE]\d{4} [\d:. ]+\s+\d+ [\w.]+:\d+\] |WARNING: All log messages before absl::"
                         rb"|To enable the following instructions:)")


def import_tensorflow():
    """`import tensorflow` (and keras), with TensorFlow's native start-up lines hidden unless asked for."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        import keras  # noqa: F401
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if not _NATIVE_LOG.match(line)]
            if kept:
                sys.stderr.write(b"".join(kept).decode(errors="replace"))
                sys.stderr.flush()
    return tensorflow
