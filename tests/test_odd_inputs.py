"""Odd inputs get one line or a listed rejection, never a traceback: symlink loops and dangling
links in the source folder, names that are not UTF-8, a 1 GB file named x.jpg, class names that
matplotlib or HTML would misread, and aliases that could not be printed or resolved back."""

from __future__ import annotations

import hashlib
import html
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT, make_class_folders, run_cli, stored_rows, write_image

ODD_CLASSES = ["cost$_$", "a<b>&\"c'", "x\\ty", "ñ/日本", "$x^2$", "long" * 75]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line a failed command prints, checked to be the only thing it says."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def rejected(store: Path) -> dict[str, str]:
    shown = run_cli("show", "raw-data:latest", "--json", "--store", str(store))
    assert shown.returncode == 0, shown.stderr
    return {item["path"]: item["reason"] for item in json.loads(shown.stdout)["rejected"]}


# -- the source folder -------------------------------------------------------------------

def test_symlink_loops_dangling_links_and_undecodable_names_are_listed_not_fatal(tmp_path):
    root = make_class_folders(tmp_path / "photos", {"Aves": 3, "Fungi": 3})
    os.symlink("..", root / "Aves" / "up")  # a loop back into the source folder
    os.symlink(".", root / "itself")  # a class folder that is the source folder
    os.symlink("loop", root / "Fungi" / "loop")  # a link that resolves to itself
    os.symlink("gone.jpg", root / "Fungi" / "dangling.jpg")
    write_image(root / "Fungi" / os.fsdecode(b"caf\xe9.png"), seed=99)
    (root / os.fsdecode(b"Plan\xfftae")).mkdir()
    write_image(root / os.fsdecode(b"Plan\xfftae") / "p.png", seed=98)
    store = tmp_path / "store"

    # A loop followed would recurse until the path is too long, branching at each level: a hang, so a time limit.
    result = subprocess.run([sys.executable, str(PROJECT / "pipeline.py"), "ingest", str(root), "--store", str(store)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    reasons = rejected(store)
    assert "symlink loop" in reasons["Aves/up"] and "symlink loop" in reasons["itself"]
    assert "symlink loop" in reasons["Fungi/loop"]
    assert "dangling symlink to gone.jpg" in reasons["Fungi/dangling.jpg"]
    assert "not valid UTF-8" in reasons["Fungi/caf\\xe9.png"] and "rename it" in reasons["Fungi/caf\\xe9.png"]
    assert "not valid UTF-8" in reasons["Plan\\xfftae"]
    shown = json.loads(run_cli("show", "raw-data:latest", "--json", "--store", str(store)).stdout)
    assert shown["meta"]["class_counts"] == {"Aves": 3, "Fungi": 3}  # nothing counted twice through a loop
    assert run_cli("verify", "--store", str(store)).returncode == 0


def test_infer_folder_walk_skips_loops_dangling_links_and_undecodable_names(tmp_path):
    from stages.infer import _folder_files, _walk_folder

    folder = tmp_path / "new"
    write_image(folder / "sub" / "a.png", seed=1)
    os.symlink("..", folder / "sub" / "up")
    os.symlink("nowhere.png", folder / "dangling.png")
    os.symlink("self.png", folder / "self.png")
    write_image(folder / os.fsdecode(b"b\xff.png"), seed=2)
    files, skipped = _walk_folder(folder)
    assert files == [folder / "sub" / "a.png"] == _folder_files(folder)
    assert dict(skipped) == {"b\\xff.png": "name is not valid UTF-8 (shown with \\x escapes): rename it",
                             "dangling.png": "dangling symlink or symlink loop",
                             "self.png": "dangling symlink or symlink loop"}


def test_odd_class_folder_names_flow_through_ingest_split_and_the_query_language(tmp_path):
    from tables.table import query_table

    names = ["two words", "it's \"quoted\"", "ñandú 日本", "cost$_$"]
    root = make_class_folders(tmp_path / "photos", dict.fromkeys(names, 4))
    store = tmp_path / "store"
    assert run_cli("ingest", str(root), "--store", str(store)).returncode == 0
    split = run_cli("split", "--store", str(store), "--set", "split.per_class={train: 2, val: 1, test: 1}")
    assert split.returncode == 0, split.stderr
    shown = json.loads(run_cli("show", "split:latest", "--json", "--store", str(store)).stdout)
    assert sorted(shown["meta"]["classes"]) == sorted(names)
    frame = pd.DataFrame({"truth": names, "guess": names[::-1], **{f"score_{n}": [0.25] * 4 for n in names}})
    assert query_table(frame, filter='x["truth"] = "it\'s \\"quoted\\""')["truth"].tolist() == [names[1]]
    assert query_table(frame, filter='x["guess"] = "cost$_$"', columns=["score_cost$_$"]).shape == (1, 1)


# -- a file too large to read whole --------------------------------------------------------

def _peak_rss_of(args: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI under a fresh parent, whose RUSAGE_CHILDREN then holds this one command's peak RSS."""
    probe = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
             "text=True); print(json.dumps([r.returncode, r.stdout, r.stderr, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, str(PROJECT / "pipeline.py"), *args],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    code, stdout, stderr, peak_kib = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, code, stdout, stderr), peak_kib * 1024


def test_a_sparse_1gb_file_named_jpg_is_rejected_without_reading_it_whole(tmp_path):
    root = make_class_folders(tmp_path / "photos", {"Aves": 2, "Fungi": 2})
    with open(root / "Aves" / "x.jpg", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: no disk used
    # A large but valid PNG: a small one with a 65 MB private chunk before its IEND.
    small = (root / "Fungi" / "img_000.png").read_bytes()
    body = b"\0" * (65 << 20)
    chunk = struct.pack(">I", len(body)) + b"prVt" + body + struct.pack(">I", zlib.crc32(b"prVt" + body))
    (root / "Fungi" / "big.png").write_bytes(small[:-12] + chunk + small[-12:])
    store = tmp_path / "store"

    result, peak = _peak_rss_of(["ingest", str(root), "--store", str(store)])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert peak < 300 << 20, f"ingest peaked at {peak >> 20} MiB on a 1 GB file"
    assert rejected(store)["Aves/x.jpg"] == "not an image (no format Pillow knows)"
    manifest = next((store / "manifests" / "raw-data").glob("*.json"))
    entries = {e["path"]: e for e in stored_rows(store, json.loads(manifest.read_bytes()))}
    big = entries["Fungi/big.png"]
    assert big["digest"] == hashlib.sha256((root / "Fungi" / "big.png").read_bytes()).hexdigest()
    assert big["format"] == "PNG" and big["size"] > 65 << 20
    assert run_cli("verify", "--store", str(store)).returncode == 0


def test_large_file_checks_catch_truncation_from_the_tail(tmp_path):
    from images.check import Rejected, inspect_large_file

    path = write_image(tmp_path / "a.jpg", seed=3, size=(64, 48), fmt="JPEG")
    data = path.read_bytes()
    assert inspect_large_file(str(path), len(data)).format == "JPEG"
    path.write_bytes(data[:-200])
    with pytest.raises(Rejected, match="truncated JPEG"):
        inspect_large_file(str(path), len(data) - 200)


# -- odd class names in plots and the report ---------------------------------------------

def _odd_frame() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, len(ODD_CLASSES), 60)
    scores = rng.dirichlet(np.ones(len(ODD_CLASSES)), 60).astype(np.float32)
    frame = pd.DataFrame({"id": [f"{i:064x}" for i in range(60)], "path": [f"{ODD_CLASSES[t]}/{i}.png"
                                                                           for i, t in enumerate(truth)],
                          "split": "test", "truth": np.asarray(ODD_CLASSES, dtype=object)[truth],
                          "guess": np.asarray(ODD_CLASSES, dtype=object)[scores.argmax(axis=1)],
                          "confidence": scores.max(axis=1)})
    for index, name in enumerate(ODD_CLASSES):
        frame[f"score_{name}"] = scores[:, index]
    return frame


def test_plots_and_report_draw_and_escape_odd_class_names():
    from report import plots
    from report.html import render_report
    from report.metrics import compute_metrics

    frame = _odd_frame()
    metrics = compute_metrics(frame, ODD_CLASSES)
    drawn = plots.standard_plots(metrics)
    drawn["scatter.png"] = plots.score_scatter(frame, "cost$_$", "$x^2$", ODD_CLASSES)
    drawn["hist.png"] = plots.class_distributions(frame, "$x^2$", "x\\ty")
    drawn["across.png"] = plots.ap_across_runs([{"x": "cost$_$", "ap": 0.5, "label": "$x^2$"},
                                                {"x": "a<b>", "ap": 0.6, "label": "v2"}], "$version$")
    assert all(png.startswith(b"\x89PNG") for png in drawn.values())
    page = render_report(title="Evaluation of <predictions:v1>", metrics=metrics, classes=ODD_CLASSES,
                         plots=drawn, table=frame, thumbnails={}, lineage=[])
    markup = page.split('<script type="application/json"')[0]
    assert "a<b>&" not in markup and html.escape("a<b>&\"c'", quote=True) in markup
    assert "&lt;predictions:v1&gt;" in markup
    data = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and "cost$_$" in data  # '<' in names is escaped inside the JSON block


# -- aliases -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    root = make_class_folders(tmp_path_factory.mktemp("alias") / "photos", {"Aves": 2, "Fungi": 2})
    store = root.parent / "store"
    assert run_cli("ingest", str(root), "--store", str(store)).returncode == 0
    return store


@pytest.mark.parametrize("alias, why", [
    ("", "is blank"), ("   ", "is blank"), ("bad\x07bell", "control or unprintable"),
    ("tab\there", "control or unprintable"), ("x" * 101, "101 characters long"), (" best", "whitespace"),
    ("best ", "whitespace"), ("a:b", "contains ':' or '@'"), ("a@b", "contains ':' or '@'"),
    ("latest", "reserved"), ("v12", "reserved"), ("zero\u200bwidth", "control or unprintable"),
])
def test_bad_aliases_are_one_line_naming_the_alias_and_a_valid_shape(small_store, alias, why):
    for args in (["alias", "raw-data:v1", alias], ["ingest", "--alias", alias]):
        line = one_error_line(run_cli(*args, "--store", str(small_store)))
        assert why in line and "pick a name like best" in line, line
        assert repr(alias[:40])[1:-1][:20] in line or alias == ""
    assert run_cli("verify", "--store", str(small_store)).returncode == 0


def test_a_good_alias_with_unicode_and_inner_space_resolves_back(small_store):
    assert run_cli("alias", "raw-data:v1", "ñice one", "--store", str(small_store)).returncode == 0
    shown = json.loads(run_cli("show", "raw-data:ñice one", "--json", "--store", str(small_store)).stdout)
    assert "ñice one" in json.dumps(shown, ensure_ascii=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder: chmod cannot make one unreadable here")
def test_an_unreadable_class_folder_is_listed_not_fatal(tmp_path):
    root = make_class_folders(tmp_path / "photos", {"Aves": 2, "Fungi": 2, "Secret": 2})
    (root / "Secret").chmod(0)
    try:
        result = run_cli("ingest", str(root), "--store", str(tmp_path / "store"))
    finally:
        (root / "Secret").chmod(0o755)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert rejected(tmp_path / "store")["Secret/"] == "unreadable folder (Permission denied), skipped"
