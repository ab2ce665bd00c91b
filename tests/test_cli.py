"""The command line as a user runs it: results, errors without tracebacks, exit codes."""

from __future__ import annotations

import json
import re

import pytest

from conftest import make_class_folders, run_cli, run_cli_traced, tensorflow_imports


@pytest.fixture
def demo_store(tmp_path):
    source = make_class_folders(tmp_path / "src", {"Aves": 7, "Fungi": 7, "Insecta": 7})
    config = tmp_path / "config.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\nstages: [ingest, split]\n"
                      f"ingest:\n  source: {source}\nsplit:\n  per_class: {{train: 3, val: 2, test: 1}}\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ingest: wrote raw-data:v1" in result.stdout and "split: wrote split:v1" in result.stdout
    return tmp_path, config


def _no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode != 0
    return result.stderr.strip()


def test_run_skips_what_is_up_to_date_and_why_names_changes(demo_store):
    tmp_path, config = demo_store
    again = run_cli("run", "--config", str(config))
    assert again.stdout.splitlines() == ["ingest: up to date, raw-data:v1", "split: up to date, split:v1"]
    why = run_cli("why", "split", "--config", str(config), "--set", "split.seed=9")
    assert "param split.seed: 42 → 9" in why.stdout
    assert run_cli("why", "split", "--config", str(config)).stdout.startswith("split: up to date (split:v1")
    (tmp_path / "src" / "Aves" / "img_000.png").unlink()
    why_ingest = run_cli("why", "ingest", "--config", str(config))
    assert "source folder changed" in why_ingest.stdout
    rerun = run_cli("run", "-q", "--config", str(config))
    assert rerun.stdout.splitlines() == ["ingest: wrote raw-data:v2", "split: wrote split:v2"]
    forced = run_cli("split", "-q", "--config", str(config), "--force")
    assert forced.stdout.strip().endswith("split: wrote split:v2")


def test_commands_that_neither_train_nor_predict_never_import_tensorflow(demo_store):
    tmp_path, config = demo_store
    more = make_class_folders(tmp_path / "more", {"Aves": 4, "Fungi": 4}, seed=3)
    commands = [["run"], ["ls"], ["show", "split:v1"], ["lineage", "raw-data:v1"], ["why", "split"],
                ["why", "split", "--set", "split.seed=9"], ["verify"], ["gc"], ["alias", "split:v1", "first"],
                ["split", "--force"], ["ingest", str(more)], ["ingest", str(more)]]
    offenders = []
    for command in commands:  # the second ingest of `more` is a cache hit, the first a real run
        result = run_cli_traced(*command, "--config", str(config))
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)
        offenders += [(" ".join(command), tensorflow_imports(result)[:3])] if tensorflow_imports(result) else []
    assert offenders == []


def test_ls_show_lineage(demo_store):
    tmp_path, config = demo_store
    rows = json.loads(run_cli("ls", "--json", "--config", str(config)).stdout)
    assert [(r["ref"], r["aliases"], r["count"]) for r in rows] == [("raw-data:v1", ["latest"], 21),
                                                                    ("split:v1", ["latest"], 18)]
    shown = run_cli("show", "split:latest", "--config", str(config)).stdout
    assert "made by  split run" in shown and "from raw-data:v1" in shown
    assert re.search(r"class\s+train\s+val\s+test\n\s+Aves\s+3\s+2\s+1\n", shown)
    summary = json.loads(run_cli("show", rows[0]["digest"][:8], "--json", "--config", str(config)).stdout)
    assert summary["ref"] == "raw-data:v1" and summary["meta"]["class_counts"]["Fungi"] == 7
    assert summary["used_by"][0]["outputs"] == ["split:v1"]
    tree = run_cli("lineage", "raw-data:v1", "--config", str(config)).stdout
    assert "descendants:" in tree and "split:v1" in tree.split("descendants:")[1]
    dot = run_cli("lineage", "--format", "dot", "--config", str(config)).stdout
    assert dot.startswith("digraph lineage {") and dot.count("->") == 3
    mermaid = run_cli("lineage", "--format", "mermaid", "--config", str(config)).stdout
    assert mermaid.startswith("flowchart LR") and mermaid.count("-->") == 3
    graph = json.loads(run_cli("lineage", "--format", "json", "--config", str(config)).stdout)
    assert len(graph["edges"]) == 3
    rebuilt = run_cli("lineage", "--rebuild", "--config", str(config))
    assert "2 versions, 2 runs" in rebuilt.stdout


def test_verify_names_damage_and_gc_removes_garbage(demo_store):
    tmp_path, config = demo_store
    store = tmp_path / "store"
    orphan = store / "objects" / "sha256" / "00" / ("0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"nobody points here")  # its name is not its hash, and nothing references it
    listed = run_cli("gc", "--grace-minutes", "0", "--config", str(config))
    assert "would remove object" in listed.stdout and orphan.exists()
    removed = run_cli("gc", "--yes", "--grace-minutes", "0", "--config", str(config))
    assert "1 item(s) removed" in removed.stdout and not orphan.exists()
    victim = next(p for p in (store / "objects" / "sha256").rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"bitrot")
    damaged = run_cli("verify", "--config", str(config))
    assert damaged.returncode == 1
    assert f"problem: object {victim.parent.name + victim.name[:10]} is corrupt" in damaged.stdout


@pytest.mark.parametrize("args, message", [
    (["show", "split:v7"], "error: split:v7 does not exist: split has v1..v1 and aliases latest"),
    (["show", "model:latest"], "error: no artifact named 'model': artifacts in this store: raw-data, split"),
    (["split", "--set", "split.sead=3"], "error: unknown config key split.sead in"),
    (["split", "--set", "split.seed=three"], "error: split.seed is 'three' (text): it must be a whole number"),
    (["split", "--set", "split.per_class={train: 30, val: 2}"], "error: class 'Aves' has 7 images, too few"),
    (["split", "--set", "colour=red"], "error: unknown config key colour"),
])
def test_user_errors_are_one_line_without_traceback(demo_store, args, message):
    _, config = demo_store
    stderr = _no_traceback(run_cli(*args, "--config", str(config)))
    assert stderr.startswith(message)
    assert len(stderr.splitlines()) == 1


def test_unknown_key_suggests_the_nearest(demo_store):
    _, config = demo_store
    assert "did you mean split.seed?" in run_cli("split", "--set", "split.sead=3", "--config", str(config)).stderr


def test_errors_outside_a_store(tmp_path):
    stderr = _no_traceback(run_cli("ls", "--store", str(tmp_path / "nowhere")))
    assert stderr.startswith("error: no artifact store at")
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "thesis.docx").write_text("x")
    assert "is not an artifact store" in _no_traceback(run_cli("ls", "--store", str(tmp_path / "notastore")))
    assert "does not exist" in _no_traceback(run_cli("ls", "--config", str(tmp_path / "missing.yaml")))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("split: [unclosed\n")
    assert "is not valid YAML at line" in _no_traceback(run_cli("ls", "--config", str(bad_yaml)))


def test_alias_names_a_version_and_survives_a_rebuild(demo_store):
    tmp_path, config = demo_store
    assert run_cli("split", "-q", "--config", str(config), "--set", "split.seed=5").returncode == 0
    tagged = run_cli("alias", "split:v1", "best", "--config", str(config))
    assert tagged.stdout.strip() == "split:best → split:v1"
    assert json.loads(run_cli("show", "split:best", "--json", "--config", str(config)).stdout)["ref"] == "split:v1"
    run_cli("alias", "split:v2", "best", "--config", str(config))
    rows = {r["ref"]: r["aliases"] for r in json.loads(run_cli("ls", "--json", "--config", str(config)).stdout)}
    assert rows["split:v1"] == [] and rows["split:v2"] == ["latest", "best"]
    (tmp_path / "store" / "lineage.json").unlink()
    rows = {r["ref"]: r["aliases"] for r in json.loads(run_cli("ls", "--json", "--config", str(config)).stdout)}
    assert rows["split:v2"] == ["latest", "best"]
    assert run_cli("verify", "--config", str(config)).returncode == 0
    assert "reserved" in _no_traceback(run_cli("alias", "split:v1", "latest", "--config", str(config)))


def test_alias_on_a_stage_command_is_checked_too(demo_store):
    _, config = demo_store
    stderr = _no_traceback(run_cli("split", "--force", "--alias", "v1", "--config", str(config)))
    assert "reserved" in stderr

