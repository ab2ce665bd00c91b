"""What a well-formed manifest, run record or reference looks like, checked when it is read.

Every file in the store is untrusted: truncated by a power loss, edited by hand, or hostile.
A digest and an artifact name are the only parts of a record that become paths, so a digest
must be 64 lowercase hex characters and a name a plain folder name before any path is built
from them (`../../etc/passwd` never reaches the filesystem). A record that fails a check
raises CorruptRecord with the reason; the store turns that into a UserError that names the
file and the command that repairs it. Each check is a small function of its own, so the
records can become dataclasses without moving the rules.
"""

from __future__ import annotations

import json
import re
from typing import Any

DIGEST = re.compile(r"[0-9a-f]{64}")
_HEX_RUN = re.compile(r"[0-9a-f]*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # artifact names and run ids: one plain path part


class CorruptRecord(ValueError):
    """A store file that does not hold what its kind must hold; the message says what is wrong."""


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None and value not in (".", "..")


def all_digests(values: Any) -> bool:
    """Every item is a digest. In C loops (a join and a regex), not one match per item: a split
    lists 100,000 digests and is read on every cache hit."""
    if not isinstance(values, list):
        return False
    try:
        return set(map(len, values)) <= {64} and _HEX_RUN.fullmatch("".join(values)) is not None
    except TypeError:  # an item is not a string (or has no len)
        return False


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptRecord("not JSON: truncated or garbled") from None


def check_ref(item: Any, where: str) -> dict:
    """A {name, digest} reference to a version, as run records and manifests hold them."""
    if not isinstance(item, dict):
        raise CorruptRecord(f"{where} is not an object")
    if not is_name(item.get("name")):
        raise CorruptRecord(f"{where} has a bad name {_short(item.get('name'))}")
    if not is_digest(item.get("digest")):
        raise CorruptRecord(f"{where} has a bad digest {_short(item.get('digest'))}")
    return item


def check_manifest(value: Any, name: str) -> dict:
    """A manifest: an object named after its folder, with well-typed entries, files and source."""
    if not isinstance(value, dict):
        raise CorruptRecord(f"holds {type(value).__name__}, not a manifest object")
    if value.get("name") != name:
        raise CorruptRecord(f"its name is {_short(value.get('name'))}, not {name!r}")
    _check_entries(value.get("entries", []))
    files = value.get("files", {})
    if not isinstance(files, dict):
        raise CorruptRecord("its files are not an object")
    for file_name, item in files.items():
        if not isinstance(item, dict) or not is_digest(item.get("digest")) or not _is_count(item.get("size", 0)):
            raise CorruptRecord(f"its file {_short(file_name)} has a bad digest or size")
    if value.get("source") is not None:
        check_ref(value["source"], "its source")
    if not isinstance(value.get("meta", {}), dict):
        raise CorruptRecord("its meta is not an object")
    return value


def _check_entries(entries: Any) -> None:
    if isinstance(entries, dict):  # a split: {split name: {class: [digest, …]}}
        for per_class in entries.values():
            if not isinstance(per_class, dict) or not all(all_digests(chunk) for chunk in per_class.values()):
                raise CorruptRecord("its split entries are not lists of digests")
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CorruptRecord("its entries are not a list of objects")
    try:
        digests = [e["digest"] for e in entries]
        sizes = [e.get("size", 0) for e in entries]
    except KeyError:
        raise CorruptRecord("an entry has no digest") from None
    if not all_digests(digests):
        raise CorruptRecord("an entry has a bad digest")
    if not all(map(_is_count, sizes)):
        raise CorruptRecord("an entry has a bad size")
    if not all(isinstance(e.get("label", ""), str) for e in entries):
        raise CorruptRecord("an entry has a bad label")


def referenced_objects(manifest: dict) -> list[str]:
    """Every object digest a manifest refers to: its entries' and its files'."""
    digests = [f["digest"] for f in manifest.get("files", {}).values()]
    entries = manifest.get("entries", [])
    if isinstance(entries, dict):  # a split: {split name: {class: [digest, …]}}
        digests += [d for per_class in entries.values() for chunk in per_class.values() for d in chunk]
    else:
        digests += [e["digest"] for e in entries]
    return digests


def check_run(value: Any, run_id: str) -> dict:
    """A run record: its own id, a stage, a status, and inputs/outputs/aliases that name versions."""
    if not isinstance(value, dict):
        raise CorruptRecord(f"holds {type(value).__name__}, not a run record object")
    if value.get("id") != run_id:
        raise CorruptRecord(f"its id is {_short(value.get('id'))}, not its file name {run_id!r}")
    if not is_name(value.get("stage")):
        raise CorruptRecord(f"its stage is {_short(value.get('stage'))}")
    if not isinstance(value.get("status"), str):
        raise CorruptRecord(f"its status is {_short(value.get('status'))}")
    for key in ("inputs", "outputs", "aliases"):
        items = value.get(key, [])
        if not isinstance(items, list):
            raise CorruptRecord(f"its {key} are not a list")
        for index, item in enumerate(items):
            check_ref(item, f"{key}[{index}]")
            if key == "outputs" and not (_is_count(item.get("size", 0)) and _is_count(item.get("count", 0))):
                raise CorruptRecord(f"outputs[{index}] has a bad size or count")
            if key == "aliases" and not isinstance(item.get("alias"), str):
                raise CorruptRecord(f"aliases[{index}] has no alias name")
    for key in ("committed", "started", "finished", "cache_key", "code_digest"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise CorruptRecord(f"its {key} is {_short(value[key])}")
    for key in ("params", "all_params"):
        if value.get(key) is not None and not isinstance(value[key], dict):
            raise CorruptRecord(f"its {key} are not an object")
    return value


def check_run_summary(value: Any, run_id: str) -> dict:
    """A run as lineage.json holds it (lineage/graph.py `_run_summary`)."""
    if not is_name(run_id) or not isinstance(value, dict) or not is_name(value.get("stage")):
        raise CorruptRecord(f"run {_short(run_id)} is malformed")
    for key in ("inputs", "outputs"):
        items = value.get(key)
        if not isinstance(items, list):
            raise CorruptRecord(f"run {run_id}'s {key} are not a list")
        for index, item in enumerate(items):
            check_ref(item, f"run {run_id} {key}[{index}]")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"
