"""Remotes, push and pull, through the real CLI against a real S3 API server (moto's, in its own process, via
real boto3 calls) and a shared folder: the same suite runs against both."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import PROJECT, make_class_folders, run_cli, run_cli_traced
from s3server import S3Server, aws_env


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


class FolderSide:
    """A folder remote, seen from outside the pipeline."""

    kind = "folder"

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.add_args = [str(root)]

    def keys(self, prefix: str) -> dict[str, bytes]:
        base = self.root / prefix
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).write_bytes(data)


class S3Side:
    kind = "s3"

    def __init__(self, server: S3Server):
        self.client = server.client()
        self.bucket = f"team-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=self.bucket)
        self.prefix = "stores/main/"
        self.add_args = [f"s3://{self.bucket}/stores/main", "--endpoint-url", server.url]

    def keys(self, prefix: str) -> dict[str, bytes]:
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                found[item["Key"][len(self.prefix):]] = body
        return found

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)


@pytest.fixture(params=["folder", "s3"])
def remote(request, tmp_path, monkeypatch):
    for key, value in aws_env().items():
        monkeypatch.setenv(key, value)
    if request.param == "folder":
        return FolderSide(tmp_path / "shared")
    return S3Side(request.getfixturevalue("s3_server"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, env=aws_env())


def ok(*args: str) -> subprocess.CompletedProcess:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def make_store(tmp_path: Path, name: str, classes: dict[str, int], seed: int = 0) -> Path:
    """A store with raw-data and split versions, made by the real CLI."""
    store = tmp_path / name
    photos = make_class_folders(tmp_path / f"{name}-photos", classes, seed=seed)
    ok("ingest", str(photos), "--store", str(store), "-q")
    ok("split", "--store", str(store), "-q", "--set", "split.allow_small_classes=true")
    return store


def add_remote(store: Path, remote) -> None:
    ok("remote", "add", "team", *remote.add_args, "--default", "--store", str(store))


def store_objects(store: Path) -> dict[str, bytes]:
    """Every object a store holds, loose or packed, by digest: two stores holding the same objects may pack them
    differently (a pack's name depends on the order its objects arrived in)."""
    from lineage.packs import PackSet

    found = {p.parent.name + p.name: p.read_bytes() for p in (store / "objects" / "sha256").rglob("*") if p.is_file()}
    packs = PackSet(store / "objects" / "packs")
    assert packs.damaged == []
    for pack in packs.packs:
        found.update((raw.hex(), data) for raw, data in pack.objects())
    return found


def store_files(store: Path) -> dict[str, bytes]:
    """objects/<digest> for each object (loose or packed), and the store's manifests and run records."""
    return {**{f"objects/{digest}": data for digest, data in sorted(store_objects(store).items())},
            **{str(p.relative_to(store)): p.read_bytes() for folder in ("manifests", "runs")
               for p in sorted((store / folder).rglob("*")) if p.is_file()}}


def packed_digests(store: Path) -> set[str]:
    from lineage.packs import PackSet

    return {pack.digest(i).hex() for pack in PackSet(store / "objects" / "packs").packs for i in range(pack.count)}


def moved(result: subprocess.CompletedProcess) -> int:
    """The object count from a push or pull summary line."""
    line = result.stdout.strip().splitlines()[-1]
    return int(line.split(": ", 1)[1].split(" object")[0].replace(",", ""))


def assert_intact(remote) -> None:
    """Every object on the remote hashes to its name: nothing half-written is visible."""
    for key, data in remote.keys("objects/").items():
        assert hashlib.sha256(data).hexdigest() == key.split("/", 2)[2].replace("/", ""), key


# -- the suite, against both kinds of remote ----------------------------------------------------------

def test_push_then_pull_into_an_empty_store_gives_the_same_store(tmp_path, remote):
    source = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    add_remote(source, remote)
    first = ok("push", "--store", str(source))
    assert moved(first) == len([k for k in store_files(source) if k.startswith("objects/")])
    assert moved(ok("push", "--store", str(source))) == 0  # nothing missing: nothing moves
    assert_intact(remote)

    copy = tmp_path / "b"
    add_remote(copy, remote)  # `remote add` makes the store it names
    pulled = ok("pull", "--store", str(copy))
    assert "pull from team:" in pulled.stdout
    verified = ok("verify", "--store", str(copy))
    assert "0 problem(s)" in verified.stdout
    runs = {k for k in store_files(source) if k.startswith("runs/")}
    finished = {k for k in runs if json.loads((source / k).read_text())["status"] == "finished"}
    expected = {k: v for k, v in store_files(source).items() if k not in runs - finished}
    pulls = {k for k in store_files(copy) if k.startswith("runs/") and json.loads((copy / k).read_text())["stage"]
             == "pull"}
    assert len(pulls) == 1  # the pull's own record: it numbers what it brought (see the stable-numbers test)
    assert {k: v for k, v in store_files(copy).items() if k not in pulls} == expected
    listing = lambda store: [(r["version"], r["digest"]) for r in json.loads(ok("ls", "--json", "--store",
                                                                                     str(store)).stdout)]
    assert listing(copy) == listing(source)
    assert moved(ok("pull", "--store", str(copy))) == 0


def test_packed_images_push_as_loose_objects_and_pull_back_into_packs(tmp_path):
    """Ingest packs small images; a remote holds loose objects only, so push sends each packed image under its
    own name, and pull packs the images again: verify is clean and every image reads back the same."""
    from lineage.store import Store

    shared = FolderSide(tmp_path / "shared")
    source = make_store(tmp_path, "a", {"Aves": 6, "Fungi": 6})
    images = packed_digests(source)
    assert len(images) == 12 and list((source / "objects" / "packs").glob("*.idx"))
    add_remote(source, shared)
    ok("push", "--store", str(source))
    on_remote = shared.keys("objects/")
    assert {f"objects/sha256/{d[:2]}/{d[2:]}" for d in images} <= set(on_remote)
    assert not any("packs" in key for key in on_remote)
    assert_intact(shared)

    copy = tmp_path / "b"
    add_remote(copy, shared)
    ok("pull", "--store", str(copy))
    assert "0 problem(s)" in ok("verify", "--store", str(copy)).stdout
    assert packed_digests(copy) == images  # packed again, not one file per image
    assert not any((copy / "objects" / "sha256" / d[:2] / d[2:]).exists() for d in images)
    here, there = Store.open(source), Store.open(copy)
    for digest in images:
        assert there.read_object(digest) == here.read_object(digest) == on_remote[f"objects/sha256/{digest[:2]}/"
                                                                                   f"{digest[2:]}"]


def test_pull_of_one_version_brings_its_objects_and_with_ancestors_theirs(tmp_path, remote):
    source = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    add_remote(source, remote)
    ok("push", "--store", str(source))
    copy = tmp_path / "b"
    add_remote(copy, remote)
    split_digest = json.loads(ok("ls", "split", "--json", "--store", str(source)).stdout)[0]["digest"]
    ok("pull", split_digest[:12], "--store", str(copy))
    raw = json.loads(ok("ls", "raw-data", "--json", "--store", str(source)).stdout)[0]
    raw_manifest = json.loads((source / "manifests" / "raw-data" / f"{raw['digest']}.json").read_text())
    raw_rows = raw_manifest["rows"]["object"]
    assert not (copy / "objects" / "sha256" / raw_rows[:2] / raw_rows[2:]).exists()  # an ancestor's own object
    assert "0 problem(s)" not in cli("verify", "--store", str(copy)).stdout
    ok("pull", split_digest[:12], "--with-ancestors", "--store", str(copy))
    assert (copy / "objects" / "sha256" / raw_rows[:2] / raw_rows[2:]).exists()
    assert "0 problem(s)" in ok("verify", "--store", str(copy)).stdout


def test_a_stage_whose_inputs_are_only_on_the_remote_fetches_them(tmp_path, remote):
    source = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    add_remote(source, remote)
    ok("push", "--store", str(source))
    copy = tmp_path / "b"
    add_remote(copy, remote)
    split_digest = json.loads(ok("ls", "split", "--json", "--store", str(source)).stdout)[0]["digest"]
    ok("pull", split_digest[:12], "--store", str(copy))  # raw-data's records and manifest come, not its objects
    resplit = ok("split", "--store", str(copy), "--set", "split.seed=7", "--set", "split.allow_small_classes=true")
    assert "fetching raw-data:v1 from remote team" in resplit.stdout
    assert "split: wrote split:v2" in resplit.stdout
    assert "0 problem(s)" in ok("verify", "--store", str(copy)).stdout


def test_a_push_killed_with_sigkill_leaves_no_run_visible_and_a_rerun_continues(tmp_path, remote):
    source = make_store(tmp_path, "a", {"Aves": 400, "Fungi": 400})
    total = len([k for k in store_files(source) if k.startswith("objects/")])
    add_remote(source, remote)
    push = subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "push", "-j", "1", "--store", str(source)],
                            env={**aws_env(), "PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while push.poll() is None and time.monotonic() < deadline:
        if len(remote.keys("objects/")) >= 5:
            break
        time.sleep(0.02)
    push.send_signal(signal.SIGKILL)
    push.communicate()
    assert push.returncode == -signal.SIGKILL, "the push finished before it could be killed: give it more objects"
    landed = len(remote.keys("objects/"))
    assert 0 < landed < total
    assert remote.keys("runs/") == {} and remote.keys("manifests/") == {}  # no run whose data is missing
    assert_intact(remote)

    rerun = ok("push", "--store", str(source))
    assert moved(rerun) == total - landed  # only what was missing moves
    copy = tmp_path / "b"
    add_remote(copy, remote)
    ok("pull", "--store", str(copy))
    assert "0 problem(s)" in ok("verify", "--store", str(copy)).stdout


def test_two_stores_pushing_at_once_leave_a_remote_that_pulls_clean(tmp_path, remote):
    # Both stores ingest the same photos (shared objects, same names written twice) and some of their own.
    first = make_store(tmp_path, "a", {"Aves": 60, "Fungi": 60}, seed=1)
    second = make_store(tmp_path, "b", {"Aves": 60, "Fungi": 60}, seed=1)
    ok("ingest", str(make_class_folders(tmp_path / "more", {"Insecta": 30, "Mollusca": 30}, seed=2)),
       "--store", str(second), "-q")
    for store in (first, second):
        add_remote(store, remote)
    env = {**aws_env(), "PYTHONPATH": str(PROJECT)}
    pushes = [subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "push", "--store", str(store)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for store in (first, second)]
    for push in pushes:
        out, err = push.communicate(timeout=300)
        assert push.returncode == 0, err
    assert_intact(remote)
    merged = tmp_path / "c"
    add_remote(merged, remote)
    ok("pull", "--store", str(merged))
    assert "0 problem(s)" in ok("verify", "--store", str(merged)).stdout
    runs = lambda store: {p.name for p in (store / "runs").glob("*.json")
                          if json.loads(p.read_text())["status"] == "finished"
                          and json.loads(p.read_text())["stage"] != "pull"}
    assert runs(merged) == runs(first) | runs(second)


def test_a_corrupt_object_on_the_remote_is_refused_on_pull_naming_it(tmp_path, remote):
    source = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    add_remote(source, remote)
    ok("push", "--store", str(source))
    images = packed_digests(source)
    keys = sorted(remote.keys("objects/"))
    image_key = next(k for k in keys if k.split("/", 2)[2].replace("/", "") in images)  # pulled into a pack
    rows_key = next(k for k in keys if k.split("/", 2)[2].replace("/", "") not in images)  # pulled loose
    copy = tmp_path / "b"
    add_remote(copy, remote)
    for key in (rows_key, image_key):  # a rows object comes first: the images after it are named by it
        good = remote.keys("objects/")[key]
        remote.write(key, b"not what was pushed")
        line = one_line_error(cli("pull", "--store", str(copy)))
        assert key in line and "corrupt" in line, line
        digest = key.split("/", 2)[2].replace("/", "")
        assert not (copy / "objects" / "sha256" / digest[:2] / digest[2:]).exists()
        assert not list((copy / "objects" / "packs").glob("*"))  # the unfinished pack is dropped
        assert list((copy / "runs").glob("*.json")) == []  # no run record names data that did not arrive
        assert list((copy / "tmp").iterdir()) == []
        remote.write(key, good)


def test_a_damaged_object_in_the_store_is_refused_by_push_naming_it(tmp_path, remote):
    """An object that rotted here must not reach the remote under a name it does not hash to (every pull
    would refuse it), and no run record may go up that names it."""
    source = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    add_remote(source, remote)
    damaged = sorted(p for p in (source / "objects" / "sha256").rglob("*") if p.is_file())[0]
    damaged.write_bytes(b"\0" * damaged.stat().st_size)  # same size: only its hash can tell
    digest = damaged.parent.name + damaged.name
    line = one_line_error(cli("push", "--store", str(source)))
    assert digest[:12] in line and "damaged" in line and "verify --repair" in line, line
    assert f"objects/sha256/{digest[:2]}/{digest[2:]}" not in remote.keys("objects/")
    assert remote.keys("runs/") == {}
    assert_intact(remote)


def test_a_damaged_packed_image_is_refused_by_push_naming_it(tmp_path):
    """A packed image has no file of its own: push reads it from its pack, checked, and refuses one whose bytes
    no longer hash to its name."""
    from lineage.packs import PackSet

    shared = FolderSide(tmp_path / "shared")
    source = make_store(tmp_path, "a", {"Aves": 4, "Fungi": 4})
    add_remote(source, shared)
    pack = PackSet(source / "objects" / "packs").packs[0]
    offset, size = pack.location(0)
    digest = pack.digest(0).hex()
    with open(pack.pack_path, "r+b") as handle:  # same size: only its hash can tell
        handle.seek(offset)
        handle.write(b"\0" * size)
    line = one_line_error(cli("push", "--store", str(source)))
    assert digest[:12] in line and "damaged" in line and "verify" in line, line
    assert f"objects/sha256/{digest[:2]}/{digest[2:]}" not in shared.keys("objects/")
    assert shared.keys("runs/") == {}
    assert_intact(shared)


def test_s3_puts_carry_their_sha256_for_the_server_to_check(tmp_path, s3_server, monkeypatch):
    """Each object goes up with its SHA-256 (S3 refuses bytes that do not match it); the server keeps the
    checksum it was given, so it is read back here."""
    import base64

    for key, value in aws_env().items():
        monkeypatch.setenv(key, value)
    side = S3Side(s3_server)
    source = make_store(tmp_path, "a", {"Aves": 3, "Fungi": 3})
    add_remote(source, side)
    ok("push", "--store", str(source))
    objects = [k for k in side.keys("objects/")]
    assert objects
    for key in objects:
        head = side.client.head_object(Bucket=side.bucket, Key=side.prefix + key, ChecksumMode="ENABLED")
        digest = key.split("/", 2)[2].replace("/", "")
        assert head.get("ChecksumSHA256") == base64.b64encode(bytes.fromhex(digest)).decode(), key


def test_small_s3_puts_do_not_wait_for_100_continue(tmp_path, s3_server, monkeypatch):
    """`Expect: 100-continue` costs a round trip per object, which at 10,000 small objects is most of a push
    to a distant S3; a body too big to resend lightly still asks first. Headers as sent to the real server."""
    from lineage.remote import SMALL_BODY, S3Remote

    for key, value in aws_env().items():
        monkeypatch.setenv(key, value)
    side = S3Side(s3_server)
    remote = S3Remote("team", f"s3://{side.bucket}/stores/main", side.bucket, side.prefix, s3_server.url)
    sent: dict[str, dict] = {}

    def record(request, **_) -> None:  # a before-send handler that returns something replaces the answer
        sent[request.url.rsplit("/", 1)[1]] = dict(request.headers)

    remote.client.meta.events.register("before-send.s3.PutObject", record)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (SMALL_BODY + 1))
    remote.upload_bytes("objects/small", b"x" * 40_000)
    remote.upload("objects/big", str(big))
    assert "Expect" not in sent["small"]
    assert sent["big"].get("Expect") == b"100-continue"
    assert side.keys("objects/") == {"objects/small": b"x" * 40_000, "objects/big": big.read_bytes()}


def test_a_store_that_cannot_reach_its_remote_says_so_in_one_line(tmp_path, remote):
    source = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    if remote.kind == "folder":
        ok("remote", "add", "team", str(tmp_path / "not-mounted"), "--default", "--store", str(source))
        line = one_line_error(cli("push", "--store", str(source)))
        assert "remote team" in line and "not-mounted" in line and "mkdir" in line
    else:
        url = remote.add_args[2]
        ok("remote", "add", "team", "s3://no-such-bucket-here/x", "--endpoint-url", url, "--default",
           "--store", str(source))
        line = one_line_error(cli("push", "--store", str(source)))
        assert "remote team" in line and "no-such-bucket-here" in line and "does not exist" in line


def test_numbers_shown_on_a_machine_never_change_when_a_pull_brings_older_versions(tmp_path, remote):
    """Two stores make raw-data versions independently; the first store's run commits first. After each pulls the
    other's, every number it showed before means the same digest, and the newcomers are numbered after them."""
    def versions(store: Path) -> dict[int, str]:
        return {r["version"]: r["digest"] for r in json.loads(ok("ls", "raw-data", "--json", "--store",
                                                                  str(store)).stdout)}

    first, second = tmp_path / "a", tmp_path / "b"
    ok("ingest", str(make_class_folders(tmp_path / "p1", {"Aves": 3}, seed=1)), "--store", str(first), "-q")
    for seed in (2, 3):
        ok("ingest", str(make_class_folders(tmp_path / f"p{seed}", {"Aves": 3}, seed=seed)), "--store", str(second),
           "-q")
    before_first, before_second = versions(first), versions(second)
    for store in (first, second):
        add_remote(store, remote)
        ok("push", "--store", str(store))
    for store in (first, second):
        ok("pull", "--store", str(store))
    after_first, after_second = versions(first), versions(second)
    assert after_first == {**before_first, 2: before_second[1], 3: before_second[2]}
    assert after_second == {**before_second, 3: before_first[1]}
    assert "0 problem(s)" in ok("verify", "--store", str(second)).stdout
    # The digest names the same version everywhere.
    digest = before_first[1][:12]
    shown = [json.loads(ok("show", digest, "--json", "--store", str(s)).stdout)["digest"] for s in (first, second)]
    assert shown == [before_first[1]] * 2
    ok("lineage", "--rebuild", "--store", str(second))  # derived from runs/ alone: a rebuild keeps the numbers
    assert versions(second) == after_second


# -- S3 only -------------------------------------------------------------------------------------------

def test_refused_credentials_are_one_line_that_never_shows_them(tmp_path):
    server = S3Server()
    try:
        server.client().create_bucket(Bucket="guarded")
        server.require_credentials()
        store = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
        ok("remote", "add", "team", "s3://guarded/x", "--endpoint-url", server.url, "--default", "--store", str(store))
        secret = "wJalrXUtnFEMI-do-not-print-me"
        result = run_cli("push", "--store", str(store),
                         env=aws_env(AWS_ACCESS_KEY_ID="AKIAUNKNOWN", AWS_SECRET_ACCESS_KEY=secret))
        line = one_line_error(result)
        assert "remote team refused the credentials" in line and "AWS_ACCESS_KEY_ID" in line
        assert secret not in result.stdout + result.stderr and "AKIAUNKNOWN" not in line
        assert secret not in (store / "remotes.json").read_text()
    finally:
        server.stop()


def test_an_unreachable_endpoint_is_one_line(tmp_path):
    from s3server import free_port

    store = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    ok("remote", "add", "team", "s3://bucket/x", "--endpoint-url", f"http://127.0.0.1:{free_port()}", "--default",
       "--store", str(store))
    line = one_line_error(cli("pull", "--store", str(store)))
    assert "cannot reach http://127.0.0.1:" in line and "remote team" in line


# -- the remote config ----------------------------------------------------------------------------------

def test_remote_add_list_remove(tmp_path):
    store = tmp_path / "store"
    ok("remote", "add", "team", "s3://bucket/a/b", "--endpoint-url", "http://minio:9000", "--store", str(store))
    ok("remote", "add", "disk", f"file://{tmp_path}/share", "--default", "--store", str(store))
    listed = ok("remote", "list", "--store", str(store)).stdout.splitlines()
    assert listed == [f"disk (default)  {tmp_path}/share", "team  s3://bucket/a/b  endpoint http://minio:9000"]
    assert "exists already" in one_line_error(cli("remote", "add", "team", "/x", "--store", str(store)))
    ok("remote", "remove", "disk", "--store", str(store))
    assert ok("remote", "list", "--store", str(store)).stdout.splitlines() == ["team  s3://bucket/a/b  "
                                                                                 "endpoint http://minio:9000"]
    assert "no remote named 'disk'" in one_line_error(cli("push", "--remote", "disk", "--store", str(store)))
    line = one_line_error(cli("remote", "add", "x", "s3://b-c/p", "--endpoint-url", "http://AKIA:hunter2@host",
                              "--store", str(store)))
    assert "hunter2" not in line and "holds credentials" in line
    assert "not supported" in one_line_error(cli("remote", "add", "y", "gs://b/p", "--store", str(store)))
    (store / "remotes.json").write_text("{oops")
    assert "remotes.json is damaged" in one_line_error(cli("remote", "list", "--store", str(store)))


def test_commands_that_touch_no_remote_never_import_boto3(tmp_path):
    store = make_store(tmp_path, "a", {"Aves": 10, "Fungi": 10})
    ok("remote", "add", "team", "s3://bucket/x", "--store", str(store))
    for command in (["ls"], ["remote", "list"], ["verify"]):
        result = run_cli_traced(*command, "--store", str(store))
        assert result.returncode == 0, result.stderr
        assert not {m for m in result.imported if m.split(".")[0] in ("boto3", "botocore")}, command
