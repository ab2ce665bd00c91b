"""Remotes: where a store's immutable files are shared, and the one small interface that moves them.

A remote holds the store's own layout under its root (objects/sha256/ab/cdef…, manifests/<name>/<digest>.json,
runs/<id>.json) and nothing derived. Every file there is named by its content (objects, manifests) or by a
unique run id, so a remote is a set of files that only grows: a write of a name that is already there writes
the same bytes, which is why two stores pushing at once cannot corrupt it.

A transport needs five operations (`Remote`): list the keys under a prefix with their sizes, read a small
file, stream a file down (hashing as it goes), and put a file or bytes so that a reader sees the whole file
or nothing. Two are here: a folder (a shared disk or NFS: temp file, then rename) and S3 through boto3
(any S3-compatible server with --endpoint-url; a PUT is atomic per object). GCS or Azure would be one more
class over their own library; fsspec could give all of them at once, but it adds a layer whose error
types differ per backend, and the errors are what this module must turn into one line each.

Credentials come only from the standard AWS chain (environment, profile, instance role): nothing here
writes them, and error lines name the remote and the error code, never what the server echoed back.

The remotes a store knows live in its own `remotes.json` (name → url, endpoint, and the default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from lineage.atomic import write_atomic
from lineage.errors import UserError
from lineage.records import CorruptRecord, is_name, parse_json

CONFIG_FILE = "remotes.json"
CHUNK = 1 << 20
SMALL_BODY = 8 << 20  # a PUT up to this size is sent without asking first (see _send_small_bodies_at_once)
CREDENTIAL_FIX = ("set credentials the standard AWS way (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                  "or ~/.aws/credentials) for an identity that may read and write")
_S3_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                        "InvalidToken", "InvalidClientTokenId", "UnrecognizedClientException", "403", "Forbidden"}
_S3_DAMAGED_CODES = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}


class Remote(ABC):
    """A place to push to and pull from. Keys are the store's relative paths, '/'-separated."""

    def __init__(self, name: str, url: str):
        self.name = name
        self.url = url

    @abstractmethod
    def list_keys(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix` (e.g. 'objects/sha256/') with its size in bytes."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """A small file's bytes (a manifest, a run record); a missing key is a UserError."""

    @abstractmethod
    def download(self, key: str, path: str) -> tuple[str, int]:
        """Stream `key` into the new file `path`; returns the sha256 and size of what arrived."""

    @abstractmethod
    def upload(self, key: str, path: str, sha256: str | None = None) -> None:
        """Put a local file at `key`, whole or not at all (`sha256` as for upload_bytes)."""

    @abstractmethod
    def upload_bytes(self, key: str, data: bytes, sha256: str | None = None) -> None:
        """Put bytes at `key`, whole or not at all; `sha256`, the bytes' hash when the caller has it, lets a
        server that checks uploads (S3) refuse bytes damaged on the way."""

    def check(self) -> None:
        """Fail early, in one line, when the remote cannot be used at all (no folder, no bucket)."""
        self.list_keys("runs/")


# -- a folder: a shared disk or NFS --------------------------------------------------------------

class FolderRemote(Remote):
    """A folder on a shared disk. Writes go to its tmp/ then are renamed into place, so a reader (another
    machine on the share) never sees half a file; a leftover in tmp/ from a killed push is never read."""

    def __init__(self, name: str, url: str, root: Path):
        super().__init__(name, url)
        self.root = root

    def check(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"remote {self.name}: folder {self.root} does not exist (or the share is not mounted): "
                            f"create it with `mkdir -p {self.root}`, mount the share, or "
                            f"`pipeline.py remote remove {self.name}` and add the right folder")

    def list_keys(self, prefix: str) -> dict[str, int]:
        self.check()
        base = self.root / prefix
        found: dict[str, int] = {}
        with self._errors(base):
            for top, folders, files in os.walk(base):
                folders[:] = [f for f in folders if not os.path.islink(os.path.join(top, f))]
                relative = os.path.relpath(top, self.root).replace(os.sep, "/")
                for file_name in files:
                    path = os.path.join(top, file_name)
                    try:
                        info = os.lstat(path)
                    except FileNotFoundError:
                        continue
                    if os.path.isfile(path) and not os.path.islink(path):
                        found[f"{relative}/{file_name}"] = info.st_size
        return found

    def read(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(path):
            with open(path, "rb") as handle:
                return handle.read()

    def download(self, key: str, path: str) -> tuple[str, int]:
        source = self._path(key)
        with self._errors(source):
            with open(source, "rb") as reader, open(path, "wb") as writer:
                return _copy_hashing(reader, writer)

    def upload(self, key: str, path: str, sha256: str | None = None) -> None:
        with self._errors(self._path(key)), self._staged(key) as staging:
            shutil.copyfile(path, staging)

    def upload_bytes(self, key: str, data: bytes, sha256: str | None = None) -> None:
        with self._errors(self._path(key)), self._staged(key) as staging:
            with open(staging, "wb") as handle:
                handle.write(data)

    @contextmanager
    def _staged(self, key: str) -> Iterator[str]:
        """A temp file in the remote's tmp/ (same filesystem, so the rename is atomic), renamed to `key`."""
        temp_dir = self.root / "tmp"
        temp_dir.mkdir(exist_ok=True)
        staging = str(temp_dir / uuid.uuid4().hex)
        try:
            yield staging
            target = self._path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.remove(staging)

    def _path(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def _errors(self, path: Path) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            self.check()
            raise UserError(f"remote {self.name} has no {path.relative_to(self.root)}: another store may be "
                            f"pushing it now, or it was removed; push it again from a store that has it") from None
        except OSError as error:
            raise UserError(f"remote {self.name}: cannot use {path} ({error.strerror}): check the share is "
                            "mounted, writable and not full") from None


# -- S3 and S3-compatible servers -------------------------------------------------------------------

class S3Remote(Remote):
    """s3://bucket/prefix through boto3. One client is shared by every thread (clients are thread-safe;
    boto3 resources are not), with a connection pool as large as the thread pool.

    Per request, the client does only what this module needs: every PUT carries the bytes' SHA-256 (S3 checks
    it on arrival, so botocore computes no CRC32 of its own); a GET is not checksummed by botocore (pull
    hashes what arrives against the object's name, a stronger check); and timestamps stay text (nothing
    here reads LastModified, and dateutil parsing one per listed key and per GET was a tenth of pull's CPU
    at 10,000 objects)."""

    def __init__(self, name: str, url: str, bucket: str, prefix: str, endpoint_url: str | None, workers: int = 16):
        super().__init__(name, url)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.workers = workers
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import botocore.session  # lazily, and not boto3 (its s3transfer import is for large files only)
            from botocore.config import Config

            config = Config(max_pool_connections=max(10, self.workers), connect_timeout=5, read_timeout=60,
                            retries={"max_attempts": 3, "mode": "standard"},
                            request_checksum_calculation="when_required", response_checksum_validation="when_required")
            with self._errors(""):
                core = botocore.session.get_session()
                core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
                self._client = core.create_client("s3", endpoint_url=self.endpoint_url, config=config)
                self._client.meta.events.register_last("before-call.s3", _send_small_bodies_at_once)
        return self._client

    def list_keys(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        full = self.prefix + prefix
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    found[item["Key"][len(self.prefix):]] = item["Size"]
        return found

    def read(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def download(self, key: str, path: str) -> tuple[str, int]:
        with self._errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
            with open(path, "wb") as writer:
                return _copy_hashing(body, writer)

    def upload(self, key: str, path: str, sha256: str | None = None) -> None:
        with self._errors(key):
            if os.path.getsize(path) > 64 * CHUNK:
                self._upload_in_parts(key, path)
                return
            checksum = _checksum(sha256) if sha256 else {}
            with open(path, "rb") as handle:
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=handle, **checksum)

    def _upload_in_parts(self, key: str, path: str) -> None:
        """A large file as a multipart upload (s3transfer, imported only here), each part's SHA-256 checked by
        S3; its failures carry the server's message, so only their kind is kept."""
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import S3Transfer

        try:
            with S3Transfer(self.client) as transfer:
                transfer.upload_file(path, self.bucket, self.prefix + key, extra_args={"ChecksumAlgorithm": "SHA256"})
        except S3UploadFailedError:
            raise UserError(f"remote {self.name}: the multipart upload of {key} failed: check the bucket's "
                            "permissions and free space, then run the same command again") from None

    def upload_bytes(self, key: str, data: bytes, sha256: str | None = None) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                   **_checksum(sha256 or hashlib.sha256(data).hexdigest()))

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """botocore's errors as one line naming the remote and the fix; the server's own message is left out
        (it may echo request details), only its error code is kept."""
        from botocore import exceptions

        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            yield
        except exceptions.NoCredentialsError:
            raise UserError(f"remote {self.name}: no AWS credentials found: {CREDENTIAL_FIX} {where}") from None
        except (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError,
                exceptions.ConnectionClosedError, exceptions.ReadTimeoutError) as error:
            endpoint = self.endpoint_url or "AWS S3"
            raise UserError(f"remote {self.name}: cannot reach {endpoint} ({type(error).__name__}): check the "
                            f"network, or the --endpoint-url (`pipeline.py remote remove {self.name}` and add it "
                            "again to change it)") from None
        except exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "unknown"))
            if code == "NoSuchBucket":
                raise UserError(f"remote {self.name}: bucket {self.bucket!r} does not exist"
                                f"{' at ' + self.endpoint_url if self.endpoint_url else ''}: create it, or "
                                f"`pipeline.py remote remove {self.name}` and add the right s3://BUCKET/PREFIX") \
                    from None
            if code in _S3_CREDENTIAL_CODES:
                raise UserError(f"remote {self.name} refused the credentials ({code}): {CREDENTIAL_FIX} {where}") \
                    from None
            if code in _S3_DAMAGED_CODES:
                raise UserError(f"remote {self.name} received {key} damaged on the way ({code}) and refused it: "
                                "run the same command again") from None
            if code in ("NoSuchKey", "404"):
                raise UserError(f"remote {self.name} has no {key}: another store may be pushing it now, or it "
                                "was removed; push it again from a store that has it") from None
            raise UserError(f"remote {self.name}: S3 answered {code} for {key or where}: check the bucket's "
                            "permissions and the endpoint, then run again") from None
        except exceptions.BotoCoreError as error:
            raise UserError(f"remote {self.name}: {type(error).__name__} talking to {where}: check the URL, "
                            "endpoint and credentials") from None


def _checksum(sha256: str) -> dict[str, str]:
    """A PUT's SHA-256, which S3 checks against what arrived and keeps with the object; given, not computed
    again by botocore."""
    return {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode()}


def _send_small_bodies_at_once(params: dict, **_) -> None:
    """botocore asks before every PUT whose body is a stream (it makes bytes one) whether it may send it
    (`Expect: 100-continue`), which costs a round trip per object: 10,000 small objects at a 30 ms round trip
    to S3 is 20 s of waiting on 16 threads. Asking pays off only for bodies too big to resend lightly."""
    from botocore.utils import determine_content_length

    size = determine_content_length(params.get("body"))
    if size is not None and size <= SMALL_BODY:
        params["headers"].pop("Expect", None)


def _copy_hashing(reader, writer) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := reader.read(CHUNK):
        digest.update(chunk)
        writer.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


# -- the store's remotes.json ------------------------------------------------------------------------

@dataclass
class RemoteConfig:
    name: str
    url: str
    endpoint_url: str | None = None

    def to_json(self) -> dict:
        return {"url": self.url, **({"endpoint_url": self.endpoint_url} if self.endpoint_url else {})}


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def normalise_url(url: str, endpoint_url: str | None) -> str:
    """The URL as remotes.json keeps it: s3://bucket[/prefix], or an absolute folder path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not _BUCKET.fullmatch(parsed.netloc or ""):
            raise UserError(f"{url!r} names no valid bucket: give s3://BUCKET/PREFIX (3-63 lowercase letters, "
                            "digits, dots or hyphens)")
        prefix = parsed.path.strip("/")
        return f"s3://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
    if endpoint_url:
        raise UserError("--endpoint-url is for s3:// remotes only: drop it, or give an s3://BUCKET/PREFIX URL")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"{url!r} names a host: a folder remote is file:///absolute/path or a plain path")
        return str(Path(parsed.path).resolve())
    if parsed.scheme and len(parsed.scheme) > 1:
        raise UserError(f"remote URL scheme {parsed.scheme!r} is not supported: use s3://BUCKET/PREFIX "
                        "(with --endpoint-url for MinIO, Ceph or R2) or a folder path")
    return str(Path(url).expanduser().resolve())


def check_endpoint(endpoint_url: str | None) -> None:
    if endpoint_url is None:
        return
    parsed = urlparse(endpoint_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError("--endpoint-url must be http://HOST[:PORT] or https://HOST[:PORT]")
    if parsed.username or parsed.password:  # never echoed: it may hold a secret
        raise UserError("--endpoint-url holds credentials: remove them; credentials come only from the standard "
                        "AWS chain (environment, AWS_PROFILE, ~/.aws/credentials) and are never stored")


def load_config(store_root: Path) -> tuple[dict[str, RemoteConfig], str | None]:
    """The remotes a store knows, and its default; a damaged remotes.json is one line naming it."""
    path = store_root / CONFIG_FILE
    try:
        with open(path, "rb") as handle:
            value = parse_json(handle.read())
    except FileNotFoundError:
        return {}, None
    except (OSError, CorruptRecord) as why:
        raise UserError(f"{path} is damaged ({getattr(why, 'strerror', None) or why}): fix or remove it, then "
                        "`pipeline.py remote add` the remotes again") from None
    remotes = value.get("remotes") if isinstance(value, dict) else None
    default = value.get("default") if isinstance(value, dict) else None
    if not isinstance(remotes, dict) or not (default is None or default in remotes):
        raise UserError(f"{path} is damaged (not a remotes file): fix or remove it, then `pipeline.py remote add` "
                        "the remotes again")
    found = {}
    for name, item in remotes.items():
        if not is_name(name) or not isinstance(item, dict) or not isinstance(item.get("url"), str) \
                or not isinstance(item.get("endpoint_url", ""), str):
            raise UserError(f"{path} is damaged (remote {str(name)[:40]!r}): fix or remove it, then "
                            "`pipeline.py remote add` the remotes again")
        found[name] = RemoteConfig(name, item["url"], item.get("endpoint_url"))
    return found, default


def save_config(store_root: Path, remotes: dict[str, RemoteConfig], default: str | None) -> None:
    data = {"remotes": {name: r.to_json() for name, r in sorted(remotes.items())}, "default": default}
    write_atomic(store_root / CONFIG_FILE, json.dumps(data, indent=1).encode(), temp_dir=store_root / "tmp")


def add_remote(store_root: Path, name: str, url: str, endpoint_url: str | None, make_default: bool) -> RemoteConfig:
    if not is_name(name):
        raise UserError(f"remote name {name[:40]!r} is not a plain name: use letters, digits, '.', '_' or '-'")
    check_endpoint(endpoint_url)
    remotes, default = load_config(store_root)
    if name in remotes:
        raise UserError(f"remote {name} exists already ({remotes[name].url}): `pipeline.py remote remove {name}` "
                        "first to change it")
    config = remotes[name] = RemoteConfig(name, normalise_url(url, endpoint_url), endpoint_url)
    save_config(store_root, remotes, name if make_default or default is None else default)
    return config


def remove_remote(store_root: Path, name: str) -> None:
    remotes, default = load_config(store_root)
    if name not in remotes:
        raise UserError(f"no remote named {name!r}: {_known(remotes)}")
    del remotes[name]
    save_config(store_root, remotes, None if default == name else default)


def _known(remotes: dict[str, RemoteConfig]) -> str:
    return f"remotes of this store: {', '.join(sorted(remotes))}" if remotes else \
        "this store has none; add one with `pipeline.py remote add NAME URL`"


def open_remote(store_root: Path, name: str | None, workers: int = 16) -> Remote:
    """The remote called `name` (else the store's default) as a transport, checked to be usable."""
    remotes, default = load_config(store_root)
    name = name or default
    if name is None:
        raise UserError("this store has no remote: add one with `pipeline.py remote add NAME URL --default`, "
                        "or pass --remote NAME")
    if name not in remotes:
        raise UserError(f"no remote named {name!r}: {_known(remotes)}")
    config = remotes[name]
    parsed = urlparse(config.url)
    if parsed.scheme == "s3":
        remote: Remote = S3Remote(name, config.url, parsed.netloc, _key_prefix(parsed.path), config.endpoint_url,
                                  workers)
    else:
        remote = FolderRemote(name, config.url, Path(config.url))
    remote.check()
    return remote


def _key_prefix(path: str) -> str:
    prefix = path.strip("/")
    return f"{prefix}/" if prefix else ""
