"""A real S3 API server on localhost for the remote tests: moto's server mode in its own process.

Its own process, not a thread of the test run: a push killed with SIGKILL must not take the server with it,
and a server that checks credentials (moto's auth switch is process-wide) must not change the others."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}
# Anything from the machine's own AWS set-up would leak into the tests (or the tests into it).
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
         "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def aws_env(**overrides: str) -> dict[str, str]:
    """The environment a child needs to talk to the test server with dummy credentials, and nothing else."""
    env = {key: value for key, value in os.environ.items() if key not in UNSET}
    env.update(DUMMY_CREDENTIALS)
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED":
                "true"})
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """`python -m moto.server` on a free port; `url` is its endpoint."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=aws_env())
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the moto S3 server did not start")
                time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                     region_name="us-east-1").client("s3", endpoint_url=self.url)

    def require_credentials(self) -> None:
        """From now on the server refuses any access key it does not know (all of ours)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})  # a form body reads as empty
        urllib.request.urlopen(request, timeout=5).read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
