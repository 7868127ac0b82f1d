"""Every way of starting a local Ray gives one whose servers listen on 127.0.0.1 only,
with Ray's token authentication on: `raymem study` with no address, with
`ray: {address: local}`, with RAY_ADDRESS=local, and `run_plan` called from Python
after the caller imported ray itself.

The study runs as a subprocess in a session of its own, in an environment that turns
token authentication off (a local Ray turns it on regardless); while it runs, the test
reads the kernel's TCP tables for every listening socket a process of that session holds,
and the environment of each of Ray's servers. Its one trial waits after its first epoch
(raymem.runtime.Runtime.hold_for_tests), so every server is up when it is read.
"""

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from raymem.localcluster import session_pids, stop_session
from raymem.runtime import HOLD_DIR

pytestmark = pytest.mark.ray


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by one of `pids`."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            address = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(address)
            ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1
            found.add((str(ip), int(hex_port, 16)))
    return found


PYTHON_USER = """
import sys
import ray  # first, as a Python user who also uses Ray may
from raymem.config import load_study
from raymem.study import make_plan, run_plan
failed = run_plan(make_plan(load_study(sys.argv[1])))
sys.exit(1 if failed else 0)
"""
RAY_SERVERS = ("gcs_server", "raylet")


def auth_modes(pids: list[int]) -> dict[str, str | None]:
    """Process name -> its RAY_AUTH_MODE, for Ray's servers among `pids`."""
    modes = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if name in RAY_SERVERS:
            values = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"RAY_AUTH_MODE=")]
            modes[name] = values[0] if values else None
    return modes


@pytest.mark.parametrize("how", ["default", "address-local", "RAY_ADDRESS-local", "python-run_plan"])
def test_a_local_ray_listens_on_loopback_only_with_token_auth(tiny_mlm, tmp_path, how):
    study = {"study": "loopback", "results": str(tmp_path / "results"), "models": [str(tiny_mlm)],
             "tasks": ["tweet_sentiment"], "seeds": [1],
             "subsample": {"train": 48, "validation": 16, "test": 16},
             "precog": {"enabled": False},
             "finetune": {"variants": ["noisy"], "epochs": 2, "batch_size": 16, "max_length": 48},
             "ray": {"num_cpus": 2, **({"address": "local"} if how == "address-local" else {})}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    ray_tmp = tempfile.mkdtemp(prefix="rmlb-", dir="/tmp")  # short: Ray's socket paths
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled",
           HOLD_DIR: str(hold)}
    env.pop("RAY_ADDRESS", None)
    if how == "RAY_ADDRESS-local":
        env["RAY_ADDRESS"] = "local"
    command = ([sys.executable, "-c", PYTHON_USER, str(path)] if how == "python-run_plan"
               else [sys.executable, "-m", "raymem.cli", "study", str(path)])
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    seen: set[tuple[str, int]] = set()
    modes: dict[str, str | None] = {}
    held = False
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            pids = session_pids(proc.pid)
            seen |= listening_sockets(pids)
            modes.update(auth_modes(pids))
            for waiting in hold.glob("*.json"):  # the trial is running: every server is up
                held = True
                seen |= listening_sockets(session_pids(proc.pid))
                waiting.unlink()
            time.sleep(0.5)
        code = proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        stop_session(proc.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0, log.read_text()[-3000:]
    assert held, "the trial never ran"
    # GCS, raylet, object manager, dashboard, agents: Ray's servers were running.
    assert len(seen) >= 4, seen
    assert {address for address, _ in seen} == {"127.0.0.1"}, sorted(seen)
    assert modes == {"gcs_server": "token", "raylet": "token"}, modes
