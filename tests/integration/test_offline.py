"""Nothing leaves the machine: the tiny pipeline (Ray included) and the Prefect flow, traced with strace.

The pipeline is the test run's shared tiny run (tests/integration/built.py traces it where strace is installed:
the flow, every stage's `dvc repro` and all they start, reporting to the test run's Prefect server); here the flow
runs again over a copy of it with its own temporary Prefect server, traced with it.

Every `connect`, `sendto`, `sendmsg` of the command and all its descendants (Python and C++ alike: DVC, Ray's GCS,
raylet and workers, the temporary Prefect server) is recorded; an address other than loopback or one of this
machine's own fails the test. Unix sockets and netlink are local by construction. A UDP `connect()` sends nothing
by itself, but it asks the kernel for a route out: Ray's node-address probe to 8.8.8.8 counts.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.local_server import OFFLINE_ENV
from flows.workspace import project_env
from tests.integration.built import Built, traced

NO_STRACE = "strace is not installed (.ci/run installs it)"
pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("strace") is None, reason=NO_STRACE)]

ADDRESS = re.compile(r'sin6?_port=htons\((\d+)\).*?(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')


def own_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This machine's interface addresses, from the kernel's tables (no tool, no lookup)."""
    found = set()
    trie = Path("/proc/net/fib_trie").read_text().splitlines()
    for previous, line in zip(trie, trie[1:]):
        if "/32 host LOCAL" in line:
            found.add(ipaddress.ip_address(previous.split()[-1]))
    inet6 = Path("/proc/net/if_inet6")
    for line in (inet6.read_text().splitlines() if inet6.exists() else []):
        found.add(ipaddress.ip_address(":".join(re.findall("....", line.split()[0]))))
    return found


def outside(log: Path) -> list[str]:
    """Trace lines whose address is neither loopback, unspecified, nor this machine's."""
    local = own_addresses()
    bad = []
    for line in log.read_text().splitlines():
        match = ADDRESS.search(line)
        if not match:
            continue
        address = ipaddress.ip_address(match.group(2) or match.group(3))
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not (address.is_loopback or address.is_unspecified or address in local):
            bad.append(line)
    return bad


def test_the_parser_flags_a_public_address_and_passes_local_ones(tmp_path: Path) -> None:
    log = tmp_path / "trace"
    log.write_text(
        '1 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}, 16) = 0\n'
        '1 connect(7, {sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
        '1 connect(8, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0\n'
        '1 connect(9, {sa_family=AF_UNIX, sun_path="/tmp/ray/session/sockets/raylet"}, 110) = 0\n')
    assert outside(log) == [log.read_text().splitlines()[0]]


def assert_local(name: str, log: Path) -> None:
    calls = log.read_text().count("\n")
    assert calls > 100, f"{name}: only {calls} traced calls; is strace tracing?"
    assert outside(log) == [], f"{name} reached outside this machine"
    print(f"{name}: {calls} socket calls traced, all local")


def test_the_pipeline_reaches_nothing_beyond_this_machine(built: Built) -> None:
    assert built.trace is not None and built.stages_run(), "the shared run was not traced"
    assert_local("the pipeline", built.trace)


def test_the_flow_reaches_nothing_beyond_this_machine(reproduced: Path, tmp_path: Path) -> None:
    env = {**project_env(), **OFFLINE_ENV}
    # The flow starts its own temporary server, traced with it, and waits for it as a user's run would: up to
    # params.yaml's flow.server_startup_timeout_s (under strace on a loaded machine it took over Prefect's 20 s).
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    log = tmp_path / "flow.trace"
    cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(reproduced)]
    done = subprocess.run(traced(cmd, log), cwd=reproduced, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"flow: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert_local("flow", log)
