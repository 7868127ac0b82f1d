"""What a Ray cluster can ever hold, checked against what a study asks for before it starts.

A placement group is all or nothing: PreCog's actor pool asks for `max_size` bundles at
once (raymem/data.py reserve_pool), and on a cluster whose autoscaler can never launch
that many nodes the group, and the study, would wait forever. A trial asking for more
than any node type has waits forever too. So before anything is written, the study's
largest asks are compared with the most the cluster can ever have:

- a local Ray: its CPUs and the GPUs torch sees;
- an autoscaling cluster: its node types and their max_workers, from the autoscaler's own
  config (the GCS's cluster config where the autoscaler reports one, else the config file
  `ray up` leaves on the head, ~/ray_bootstrap_config.yaml, where `ray job submit` runs
  the driver; RAYMEM_AUTOSCALING_CONFIG names another file);
- a cluster without an autoscaler: the nodes it has.

Where none of these can be read, nothing is refused, and the wait for the pool is bounded
by `ray.placement_timeout_s` (raymem/study.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from raymem.errors import ConfigError

AUTOSCALING_CONFIG = "RAYMEM_AUTOSCALING_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the autoscaler's config
EPS = 1e-9  # fractional GPUs: 4 x 0.25 fills one


@dataclass
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int | None  # None: no limit of its own
    is_head: bool = False


@dataclass
class Capacity:
    """The node types a cluster may have at once, and the cap on its worker nodes."""
    node_types: list[NodeType]
    max_workers: int | None  # worker nodes of all types together (the head not counted)
    source: str              # where this was read, for messages
    notes: list[str] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)  # cluster-wide caps on a resource

    def describe(self) -> str:
        parts = []
        for t in self.node_types:
            res = ", ".join(f"{v:g} {k}" for k, v in sorted(t.resources.items()) if k in ("CPU", "GPU") and v)
            count = "1 (the head)" if t.is_head else f"up to {t.max_count}" if t.max_count is not None else "any number"
            parts.append(f"{t.name}: {count} x ({res or 'nothing'})")
        cap = f"; at most {self.max_workers} worker nodes in all" if self.max_workers is not None else ""
        return f"{'; '.join(parts)}{cap} ({self.source})"

    def most(self, bundle: dict[str, float]) -> float:
        """How many copies of `bundle` the cluster can ever hold at once (math.inf: no limit)."""
        fits = []
        for t in self.node_types:
            per_node = min((math.floor(t.resources.get(k, 0.0) / v + EPS) for k, v in bundle.items() if v > 0),
                           default=math.inf)
            if per_node > 0:
                fits.append((per_node, t))
        total, workers_left = 0.0, math.inf if self.max_workers is None else self.max_workers
        for per_node, t in sorted(fits, key=lambda f: -f[0]):  # the roomiest nodes first
            if t.is_head:
                total += per_node
                continue
            count = min(workers_left, math.inf if t.max_count is None else t.max_count)
            if count == math.inf:
                total = math.inf
                break
            total += per_node * count
            workers_left -= count
        for key, limit in self.limits.items():
            if bundle.get(key, 0) > 0:
                total = min(total, math.floor(limit / bundle[key] + EPS))
        return total


def from_autoscaler_config(cfg: dict, source: str) -> Capacity:
    """From an autoscaler config (cluster.yaml's format, as ~/ray_bootstrap_config.yaml)."""
    head = cfg.get("head_node_type")
    types = []
    for name, spec in (cfg.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        if not resources:  # left to Ray to detect from the instance type: unknown here
            return Capacity([], None, source, [f"node type {name} states no resources"])
        types.append(NodeType(name, resources, 1 if name == head else spec.get("max_workers"), name == head))
    return Capacity(types, cfg.get("max_workers"), source)


def from_cluster_config(config, source: str = "the cluster config the autoscaler reported") -> Capacity:
    """From the GCS's ClusterConfig (autoscaler v2, KubeRay): node groups with max counts."""
    types = [NodeType(g.name or f"group {i}", {k: float(v) for k, v in g.resources.items()},
                      None if g.max_count == -1 else g.max_count)
             for i, g in enumerate(config.node_group_configs)]
    return Capacity(types, None, source, limits={k: float(v) for k, v in config.max_resources.items()})


def from_nodes(nodes: list[dict], source: str = "the cluster's nodes; it has no autoscaler") -> Capacity:
    """A cluster that does not grow: each live node once (ray.nodes())."""
    return Capacity([NodeType(n.get("NodeManagerAddress", "node"), dict(n.get("Resources", {})), 1)
                     for n in nodes if n.get("Alive")], None, source)


def local(cpus: int, gpus: int) -> Capacity:
    return Capacity([NodeType("this machine", {"CPU": float(cpus), "GPU": float(gpus)}, 1, True)], None,
                    "the study's local Ray (ray.num_cpus; the GPUs torch sees)")


def of_running_cluster() -> Capacity | None:
    """The capacity of the cluster this process is connected to (ray.init done); None when
    it cannot be known (an autoscaler runs, but its config is neither reported nor here)."""
    import ray
    import yaml
    from ray._private import ray_constants
    from ray._private.state import state
    from ray.experimental.internal_kv import _internal_kv_get

    reported = state.get_cluster_config()
    if reported is not None and reported.node_group_configs:
        return from_cluster_config(reported)
    path = Path(os.environ.get(AUTOSCALING_CONFIG) or BOOTSTRAP_CONFIG).expanduser()
    if path.is_file():
        return from_autoscaler_config(yaml.safe_load(path.read_text()), f"the autoscaler config {path}")
    if _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) is None:  # no autoscaler reports
        return from_nodes(ray.nodes())
    return None


def check(asks: dict[str, tuple[dict[str, float], int]], capacity: Capacity) -> None:
    """Refuse (ConfigError naming the field) an ask the cluster can never hold.
    asks: field -> (one bundle, how many at once, all or nothing)."""
    if not capacity.node_types:
        return
    for where, (bundle, count) in asks.items():
        most = capacity.most(bundle)
        what = ", ".join(f"{v:g} {k}" for k, v in bundle.items() if v)
        if count == 1 and most < 1:
            raise ConfigError(f"{where}: a trial asks for {what}, more than any node of this cluster can "
                              f"ever have: {capacity.describe()}; lower it, or add a node type that has it")
        if most < count:
            raise ConfigError(f"{where}.max_size: the actor pool's placement group asks for "
                              f"{count} x ({what}) at once, all or nothing, but this cluster can hold at most "
                              f"{int(most)} of them: {capacity.describe()}; lower max_size to {int(most)} or "
                              f"raise the node type's max_workers (and max_workers) in the cluster config")
