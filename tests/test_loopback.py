"""A local `raymem study` starts a Ray whose servers listen on 127.0.0.1 only.

The study runs as a subprocess in a session of its own; while it runs, the test reads the
kernel's TCP tables for every listening socket a process of that session holds.
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


def test_a_local_study_listens_on_loopback_only(tiny_mlm, tmp_path):
    study = {"study": "loopback", "results": str(tmp_path / "results"), "models": [str(tiny_mlm)],
             "tasks": ["tweet_sentiment"], "seeds": [1],
             "subsample": {"train": 48, "validation": 16, "test": 16},
             "precog": {"enabled": False},
             "finetune": {"variants": ["noisy"], "epochs": 6, "batch_size": 16, "max_length": 48},
             "ray": {"num_cpus": 2}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    ray_tmp = tempfile.mkdtemp(prefix="rmlb-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raymem.cli", "study", str(path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    seen: set[tuple[str, int]] = set()
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            seen |= listening_sockets(session_pids(proc.pid))
            time.sleep(0.5)
        code = proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        stop_session(proc.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0, log.read_text()[-3000:]
    # GCS, raylet, object manager, dashboard, agents: Ray's servers were running.
    assert len(seen) >= 4, seen
    assert {address for address, _ in seen} == {"127.0.0.1"}, sorted(seen)
