"""A Ray cluster that autoscales, on one machine: for trying autoscaling on a laptop, for
tests and for benchmarks.

Ray's fake multi-node provider plays the cloud. When tasks ask for resources no node has,
the autoscaler "launches" a worker node of a type that has them (a raylet of its own on
this machine, started inside the autoscaler's process) and removes it once it has been
idle for `idle_timeout_s`. Node types and limits are those of a cluster.yaml's
`available_node_types`, so a sweep that asks a real cluster for GPU workers asks this
one the same way:

    from raymem.localcluster import CLIENT_ENV, LocalCluster
    os.environ.update(CLIENT_ENV)           # before `import ray` (see CLIENT_ENV)
    import ray

    gpu = {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2}
    with LocalCluster(head_cpus=1, workers={"gpu": gpu}) as cluster:
        ray.init(address=cluster.address)   # or a subprocess with env=cluster.env()
        ...                                  # GPU tasks wait until a GPU node joins
        cluster.nodes()                      # the live nodes, head included

A fake GPU is a resource label only: a task on it sees CUDA_VISIBLE_DEVICES set, and no
device. Every node shares this machine's cores, so more nodes add scheduling slots, not
compute.

Everything listens on 127.0.0.1 only and lives under a temporary folder of its own
(RAY_TMPDIR), so it neither finds nor is found by another Ray on the machine. `stop()`
kills the processes of the session `ray start` ran in (worker nodes included: the
autoscaler starts them) and nothing else; never `ray stop`, which kills every Ray
process of the machine by name. Linux only (process sessions are read from /proc).

Why not `ray.cluster_utils.AutoscalingCluster`: it reads an example.yaml the Ray wheel
does not ship, and its start() and shutdown() run `ray stop --force`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raymem.capacity import AUTOSCALING_CONFIG

BIN = Path(sys.executable).parent
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head node type

# What a client of the cluster needs in its environment before it imports ray:
# - Ray's single-machine mode (as on macOS): "127.0.0.1" stays 127.0.0.1 instead of being
#   turned into the machine's address. The cluster runs in this mode, so its servers bind
#   to loopback only, and a client must look for them there.
#   (A client without it fails with "Failed to connect to GCS at <machine address>:port".)
# - no token authentication (nothing but this machine can reach the cluster).
CLIENT_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
# A Ray of a study's own (`init_local_ray`): loopback only, as above, and token auth on
# (Ray keeps the token in ~/.ray/auth_token, made on first use; `ray get-auth-token`).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


def init_local_ray(**options) -> None:
    """`ray.init` of a new Ray of this process's own on this machine, the one way raymem
    starts a local Ray: every server bound to 127.0.0.1 (node and dashboard) and Ray's
    token authentication on, whatever the environment says (a local Ray needs no other
    client, so neither the network nor another user of the machine may reach it).

    Ray reads its single-machine switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) once, when it
    is imported; where it already was (a Python user's `import ray` before raymem), the
    read value is set here too. The environment carries both settings to the processes
    Ray starts (raylet, dashboard, workers)."""
    import ray
    from ray._private import ray_constants
    from ray._raylet import Config

    os.environ.update(LOOPBACK_ENV)
    # Ray's own switch, already read at import: without it "127.0.0.1" becomes the
    # machine's address and its servers listen on every interface
    ray_constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")  # Ray's cached settings read RAY_AUTH_MODE again (as `ray.init` does)
    ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", **options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (zombies left out)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, _, _, session = raw[raw.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state not in "ZX":
            pids.append(int(entry))
    return pids


def stop_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of session `sid` (e.g. a `ray start` run with
    start_new_session=True, and everything it started); wait until they are gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while session_pids(sid) and time.time() < deadline:
            time.sleep(0.2)
    if left := session_pids(sid):
        raise RuntimeError(f"processes of session {sid} still running: {left}")


class LocalCluster:
    """A head node plus autoscaled worker nodes, all of them processes of this machine.

    head_cpus, head_gpus: the head's resources (no GPU on the head makes GPU work wait
        for a worker node).
    workers: node type name -> {"resources": {...}, "min_workers": n, "max_workers": m},
        as a cluster.yaml's available_node_types.
    idle_timeout_s: how long a worker node may sit idle before the autoscaler removes it.
    object_store_mb: each node's object store (Ray's default, 30% of RAM per node, is
        far more than a sweep of small results needs, times the number of nodes).
    """

    def __init__(self, head_cpus: int = 1, head_gpus: int = 0, workers: dict | None = None,
                 idle_timeout_s: float = 5.0, object_store_mb: int = 256):
        self.head_cpus, self.head_gpus = head_cpus, head_gpus
        self.workers = workers or {}
        self.idle_timeout_s = idle_timeout_s
        self.object_store_mb = object_store_mb
        self.address: str | None = None    # GCS, for ray.init(address=...) and RAY_ADDRESS
        self.dashboard: str | None = None  # http URL: state API, job submission
        self.root: Path | None = None      # RAY_TMPDIR: sessions, logs
        self._sid: int | None = None

    def config(self, gcs_address: str) -> dict:
        """The autoscaling config. Complete: the autoscaler checks it against Ray's schema,
        and the provider's defaults file (example.yaml) is not in the wheel."""
        types = {HEAD_TYPE: {"resources": {"CPU": self.head_cpus, "GPU": self.head_gpus},
                             "node_config": {}, "max_workers": 0}}
        for name, spec in self.workers.items():
            types[name] = {
                "resources": {"object_store_memory": self.object_store_mb * 2 ** 20, **spec["resources"]},
                "node_config": {}, "min_workers": spec.get("min_workers", 0),
                "max_workers": spec.get("max_workers", 1)}
        return {
            "cluster_name": "raymem-local",
            "max_workers": sum(t["max_workers"] for t in types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "gcs_address": gcs_address},  # default: <machine address>:6379
            "available_node_types": types, "head_node_type": HEAD_TYPE,
            "upscaling_speed": 1.0, "idle_timeout_minutes": self.idle_timeout_s / 60,
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def env(self) -> dict:
        """The environment for a process that uses the cluster, e.g. a `raymem study`."""
        env = {**os.environ, **CLIENT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        if self.root:
            env["RAY_TMPDIR"] = str(self.root)
            # where a study reads what the cluster can ever hold (raymem/capacity.py)
            env[AUTOSCALING_CONFIG] = str(self.root / "autoscaling.json")
        if self.address:
            env["RAY_ADDRESS"] = self.address
        return env

    def start(self, timeout: float = 120) -> str:
        """Start the head (its autoscaler then starts min_workers nodes of each type);
        return the GCS address."""
        # short: Ray's socket paths under it must stay below the 107-byte limit
        self.root = Path(tempfile.mkdtemp(prefix="rmlc-", dir="/tmp"))
        port, dashboard = _free_port(), _free_port()
        config = self.root / "autoscaling.json"
        config.write_text(json.dumps(self.config(f"127.0.0.1:{port}")))
        env = {**self.env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               # metrics servers whose default ports are fixed: free ones, not another Ray's
               "AUTOSCALER_METRIC_PORT": str(_free_port()), "DASHBOARD_METRIC_PORT": str(_free_port())}
        env.pop("RAY_ADDRESS", None)
        log = self.root / "ray-start.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--autoscaling-config={config}",
                 f"--num-cpus={self.head_cpus}", f"--num-gpus={self.head_gpus}",
                 f"--object-store-memory={self.object_store_mb * 2 ** 20}",
                 "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={_free_port()}",
                 f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._sid = proc.pid  # `ray start` leads a new session: every process of the cluster
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = "timeout"
        if code != 0:
            text = log.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"ray start failed ({code}):\n{text}")
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
        return self.address

    def stop(self, grace: float = 5.0) -> None:
        """Kill every process of the cluster's session; remove its folder."""
        if self._sid is not None:
            stop_session(self._sid, grace)
            self._sid = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = self.address = self.dashboard = None

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def nodes(self) -> list[dict]:
        """The live nodes (Ray's state API): node id, node type, resources."""
        from ray.util.state import list_nodes

        # the dashboard's URL, not the GCS address: no ray.init needed in this process
        alive = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False)
        return [{"node_id": n.node_id, "type": HEAD_TYPE if n.is_head_node else self._type(n.resources_total),
                 "resources": {k: v for k, v in n.resources_total.items() if not k.startswith("node:")}}
                for n in alive]

    def _type(self, resources: dict) -> str | None:
        # Ray records no node type for a fake node: the type whose resources it has
        for name, spec in self.workers.items():
            if all(resources.get(k) == v for k, v in spec["resources"].items()):
                return name
        return None

    def wait_for(self, condition, timeout: float, what: str, poll: float = 0.5) -> list[dict]:
        """Poll nodes() until condition(nodes) holds; return those nodes, or raise naming `what`."""
        deadline = time.time() + timeout
        while True:
            nodes = self.nodes()
            if condition(nodes):
                return nodes
            if time.time() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s; nodes: "
                                   f"{[(n['node_id'][-5:], n['type']) for n in nodes]}")
            time.sleep(poll)
