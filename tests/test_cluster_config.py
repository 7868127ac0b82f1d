"""cluster.yaml (AWS) and cluster-gcp.yaml (GCP): valid for Ray 2.60's autoscaler, with a
GPU worker type that scales from zero, the project's exact pins, and nothing open to the
world or secret in them.

The AWS file also goes through Ray's own AWS bootstrap (the code `ray up` runs before it
launches anything) against moto's in-process EC2 and IAM: that shows Ray uses the
security group the file names and creates none of its own (its default group would admit
SSH from anywhere).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
FILES = {"aws": ROOT / "cluster.yaml", "gcp": ROOT / "cluster-gcp.yaml"}
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
GPU_TYPE = "gpu_worker"

SECRET_PATTERNS = [
    r"aws_secret_access_key", r"aws_access_key_id", r"aws_session_token",
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",               # AWS access key ids
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"private_key_id", r"\"private_key\"",
    r"\bgcp_credentials\b", r"\bssh_private_key\b",
    r"\bpassword\s*[:=]", r"\bsecret\s*[:=]", r"\btoken\s*[:=]",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}", r"\bxox[abp]-", r"\bAIza[0-9A-Za-z_-]{30,}",
]


def load(kind: str) -> dict:
    return yaml.safe_load(FILES[kind].read_text())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def direct_pins() -> dict[str, str]:
    pins = {}
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        (spec,) = req.specifier  # every direct dependency is pinned with ==
        assert spec.operator == "==", line
        pins[req.name.lower()] = spec.version
    return pins


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def setup_commands(cfg: dict, node: str) -> list[str]:
    """The commands a node of that kind runs, as Ray merges them."""
    merged = prepare_config(copy.deepcopy(cfg))
    return merged["head_setup_commands" if node == "head" else "worker_setup_commands"]


def install_commands(commands: list[str]) -> list[list[str]]:
    """Every `pip install` / `uv pip install` in the commands, as argument lists."""
    found = []
    for command in commands:
        for part in re.split(r"&&|\|\||;", command):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2:])
    return found


def remote_to_local(cfg: dict, remote: str) -> Path:
    """Map a path on a node back to the repository path `file_mounts` syncs there.

    A folder on the node that is not itself a mount maps to the one local folder all
    the mounts inside it come from (e.g. ~/raymem <- the repository root).
    """
    remote = remote.rstrip("/")
    bases = set()
    for node_path, local in cfg["file_mounts"].items():
        node_path = node_path.rstrip("/")
        local_path = (ROOT / local).resolve()
        if node_path == remote:
            return local_path
        if node_path.startswith(remote + "/"):
            inner = Path(node_path[len(remote) + 1:])
            assert local_path.parts[-len(inner.parts):] == inner.parts, (node_path, local)
            bases.add(Path(*local_path.parts[:-len(inner.parts)]))
    assert len(bases) == 1, f"{remote} is not synced by file_mounts from one place: {bases}"
    return bases.pop()


# -- both files ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", FILES)
def test_valid_against_rays_schema(kind):
    cfg = load(kind)
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(cfg), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # What `ray up` does before it talks to the cloud: merge defaults, validate again.
    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("kind", FILES)
def test_node_types(kind):
    cfg = load(kind)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert set(workers) == {GPU_TYPE}
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # a CPU head

    gpu = types[GPU_TYPE]
    assert gpu["min_workers"] == 0  # scales from zero
    assert gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["CPU"] >= 1
    # The cluster-wide cap must not silently undercut the GPU type's own cap.
    assert cfg["max_workers"] >= gpu["max_workers"]
    text = FILES[kind].read_text()
    assert "gpu_worker.max_workers" in text  # where the user sets the number of GPUs


def test_spot_with_an_on_demand_variant_documented():
    aws = load("aws")["available_node_types"][GPU_TYPE]["node_config"]
    assert aws["InstanceMarketOptions"]["MarketType"] == "spot"
    gcp = load("gcp")["available_node_types"][GPU_TYPE]["node_config"]
    assert gcp["scheduling"]["provisioningModel"] == "SPOT"
    assert gcp["scheduling"]["onHostMaintenance"] == "TERMINATE"  # required for GPU VMs
    for kind in FILES:
        assert "On-demand instead" in FILES[kind].read_text()


@pytest.mark.parametrize("kind", FILES)
def test_file_mounts_sync_the_install_inputs(kind):
    cfg = load(kind)
    for remote, local in cfg["file_mounts"].items():
        assert not Path(local).is_absolute(), f"{local}: relative to the repository root"
        assert (ROOT / local).exists(), f"file_mounts: {local} is not in the repository"
        assert remote.startswith("~/raymem/")
    locals_ = {Path(v) for v in cfg["file_mounts"].values()}
    assert {Path("pyproject.toml"), Path("requirements.lock"), Path("raymem")} <= locals_
    readme = pyproject()["project"].get("readme")
    if readme:  # setuptools reads it while building
        assert Path(readme) in locals_


@pytest.mark.parametrize("node", ["head", "worker"])
@pytest.mark.parametrize("kind", FILES)
def test_setup_installs_exactly_the_pins(kind, node):
    cfg = load(kind)
    commands = setup_commands(cfg, node)
    installs = install_commands(commands)
    lock = lock_pins()

    # raymem itself, from the synced pyproject.toml, constrained by the synced lock.
    project = [a for a in installs if "-e" in a]
    assert len(project) == 1, installs
    args = project[0]
    assert remote_to_local(cfg, args[args.index("-e") + 1]) == ROOT
    assert remote_to_local(cfg, args[args.index("-c") + 1]) == ROOT / "requirements.lock"

    # Every other install is constrained by the lock too, or pins what the lock lacks.
    for args in installs:
        assert "-c" in args and remote_to_local(cfg, args[args.index("-c") + 1]) == \
            ROOT / "requirements.lock", args
        assert not {"-U", "--upgrade", "--pre"} & set(args), args
        for word in args:
            if word.startswith("-") or word.startswith("~") or word.startswith("/"):
                continue
            req = Requirement(word)
            name = req.name.lower()
            if name in lock:
                assert not req.specifier or req.specifier == SpecifierSet(f"=={lock[name]}"), word
            else:
                assert str(req.specifier).startswith("=="), f"{word}: not in the lock, so pin it"

    # The lock agrees with pyproject's direct pins: so the nodes get exactly those.
    pins = direct_pins()
    for name in ("ray", "torch", "transformers"):
        assert name in pins
    for name, version in pins.items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"

    # Python: what pyproject requires, and a pinned uv to provide it.
    (venv,) = [c for c in commands if re.search(r"\buv venv\b", c)]
    python = re.search(r"--python (\S+)", venv).group(1)
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{python}.0")
    assert re.search(r"astral\.sh/uv/\d+\.\d+\.\d+/install\.sh", " ".join(commands))


@pytest.mark.parametrize("kind", FILES)
def test_start_commands_use_the_venv_and_a_loopback_dashboard(kind):
    merged = prepare_config(load(kind))  # the defaults' own commands say --dashboard-host=0.0.0.0
    head = " ".join(merged["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert head.count("ray start") == 1
    for command in merged["head_start_ray_commands"] + merged["worker_start_ray_commands"]:
        # The venv's ray, and its Python for the jobs' `python ...` entrypoints.
        assert re.search(r"source ~/raymem-env/bin/activate && ray (start|stop)\b", command), \
            command


@pytest.mark.parametrize("kind", FILES)
def test_nothing_open_to_the_world(kind):
    text = FILES[kind].read_text()
    assert "0.0.0.0" not in text
    assert "::/0" not in text


@pytest.mark.parametrize("kind", FILES)
def test_no_secrets(kind):
    text = FILES[kind].read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text, re.IGNORECASE), pattern
    cfg = load(kind)
    assert set(cfg["auth"]) == {"ssh_user"}  # Ray makes and keeps the SSH key
    assert "gcp_credentials" not in cfg["provider"]


# -- AWS -------------------------------------------------------------------------------

def test_aws_names_its_security_group_everywhere():
    cfg = load("aws")
    assert "security_group" not in cfg["provider"]  # Ray would create one with SSH from anywhere
    groups = {name: t["node_config"].get("SecurityGroupIds")
              for name, t in cfg["available_node_types"].items()}
    assert all(groups.values()), groups
    assert len({tuple(g) for g in groups.values()}) == 1  # one group: nodes reach each other
    worker = cfg["available_node_types"][GPU_TYPE]["node_config"]
    assert worker["IamInstanceProfile"] == {"Name": "raymem-worker"}  # S3 access by role


@pytest.fixture
def moto_aws(monkeypatch, tmp_path):
    moto = pytest.importorskip("moto")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2",
                 "AWS_ENDPOINT_URL_IAM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", load("aws")["provider"]["region"])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the SSH key under ~/.ssh

    import ray.autoscaler._private.aws.config as aws_config
    import ray.autoscaler._private.aws.utils as aws_utils

    monkeypatch.setattr(aws_config.time, "sleep", lambda _s: None)  # IAM "propagation" waits

    def clear():
        aws_utils.resource_cache.cache_clear()
        aws_utils.client_cache.cache_clear()
        aws_config._get_subnets_or_die.cache_clear()

    clear()
    with moto.mock_aws():
        # The head's role as Ray's first `ray up` leaves it (moto has no managed policies).
        import boto3

        iam = boto3.client("iam")
        iam.create_role(RoleName="ray-autoscaler-v1", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="ray-autoscaler-v1")
        iam.add_role_to_instance_profile(InstanceProfileName="ray-autoscaler-v1",
                                         RoleName="ray-autoscaler-v1")
        yield aws_config
    clear()


def test_aws_bootstrap_uses_only_the_named_group(moto_aws):
    import boto3

    cfg = load("aws")
    region = cfg["provider"]["region"]
    ec2 = boto3.client("ec2", region_name=region)
    # What the one-time setup in cluster.yaml's header creates.
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="raymem-cluster", Description="raymem",
                                   VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=sg, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg}]}])
    ec2.authorize_security_group_ingress(GroupId=sg, IpProtocol="tcp", FromPort=22, ToPort=22,
                                         CidrIp="203.0.113.7/32")
    groups_before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}

    text = FILES["aws"].read_text().replace("sg-CHANGE-ME", sg)
    config = prepare_config(yaml.safe_load(text))
    validate_config(config)
    resolved = moto_aws.bootstrap_aws(config)

    for name, node_type in resolved["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"] == [sg], name
        assert node_type["node_config"]["SubnetIds"], name
    after = ec2.describe_security_groups()["SecurityGroups"]
    assert {g["GroupId"] for g in after} == groups_before  # Ray created no group
    for group in after:
        for rule in group["IpPermissions"]:
            cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])]
            cidrs += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
            assert "0.0.0.0/0" not in cidrs and "::/0" not in cidrs, (group["GroupName"], rule)
    assert resolved["head_node"]["IamInstanceProfile"]["Arn"].endswith("/ray-autoscaler-v1")


def test_aws_placeholder_group_stops_ray_up_early(moto_aws, capsys, caplog):
    config = prepare_config(load("aws"))  # sg-CHANGE-ME still in place
    with pytest.raises(AssertionError):
        moto_aws.bootstrap_aws(config)
    said = capsys.readouterr()
    assert "Failed to detect a security group" in said.out + said.err + caplog.text


# -- GCP -------------------------------------------------------------------------------

def test_gcp_uses_its_own_network_and_no_project_by_default():
    cfg = load("gcp")
    assert cfg["provider"]["project_id"] is None  # `ray up` stops and asks for it
    for name, node_type in cfg["available_node_types"].items():
        interfaces = node_type["node_config"]["networkInterfaces"]  # else Ray picks one
        assert [i["subnetwork"] for i in interfaces] == ["regions/us-central1/subnetworks/raymem"]
        assert cfg["provider"]["region"] in interfaces[0]["subnetwork"]
    worker = cfg["available_node_types"][GPU_TYPE]["node_config"]
    (account,) = worker["serviceAccounts"]
    assert account["email"].startswith("raymem-worker@")
