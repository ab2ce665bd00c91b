"""The child process that draws an eval version's PNGs (report/charts.py: pngs_in_background).

vl-convert holds the GIL while it draws, about 3 s for eight charts at 1,000,000 rows, so evaluate has them drawn
here while it builds the page. Specs come in as one JSON object on stdin ({"scale", "specs"}); for each spec, in
order, one record goes out on stdout: b"P" or b"E", the payload's length (8 bytes, little-endian), then the PNG or
the renderer's error message. It runs as a script under `python -I` and imports nothing of the project.
"""

import json
import struct
import sys

import vl_convert


def main() -> None:
    request = json.load(sys.stdin)
    out = sys.stdout.buffer
    for spec in request["specs"]:
        try:
            status, data = b"P", vl_convert.vegalite_to_png(spec, scale=request["scale"])
        except ValueError as error:  # a spec it cannot compile or draw: the parent names the chart
            status, data = b"E", str(error).encode("utf-8", "replace")
        out.write(status + struct.pack("<Q", len(data)) + data)
        out.flush()


if __name__ == "__main__":
    main()
