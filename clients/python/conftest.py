"""Generates the stubs from proto/ before collection and hands the tests
channels to the gateway: as the customer (SHOPMESH_TOKEN), as another
customer (SHOPMESH_OTHER_TOKEN), and without a token. SHOPMESH_GATEWAY is the
gateway's host:port (default 127.0.0.1:8080, as under `make run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_sessionstart(session: pytest.Session) -> None:
    # Regenerated every run (a fraction of a second), so the stubs always match proto/.
    res = subprocess.run(
        [str(HERE / "generate.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise pytest.UsageError(f"generate.sh failed ({res.returncode}):\n{res.stderr}{res.stdout}")


def _token(name: str, user: str) -> str:
    token = os.environ.get(name, "")
    if not token:
        pytest.fail(f"{name} is not set: export {name}=$(make -s token USER={user})", pytrace=False)
    return token


@pytest.fixture(scope="session")
def gateway() -> str:
    return os.environ.get("SHOPMESH_GATEWAY", "127.0.0.1:8080")


def _channel(gateway: str, token: str | None):
    import shopmesh_client as sm

    channel = sm.connect(gateway, token)
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def customer(gateway: str):
    """A channel that calls as the customer of SHOPMESH_TOKEN."""
    yield from _channel(gateway, _token("SHOPMESH_TOKEN", "alice"))


@pytest.fixture(scope="session")
def other_customer(gateway: str):
    """A channel that calls as another customer (SHOPMESH_OTHER_TOKEN)."""
    yield from _channel(gateway, _token("SHOPMESH_OTHER_TOKEN", "bob"))


@pytest.fixture(scope="session")
def anonymous(gateway: str):
    """A channel that sends no authorization."""
    yield from _channel(gateway, None)
