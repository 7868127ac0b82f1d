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

from raymem import gpu_stack, nodecheck
from raymem.localcluster import LOOPBACK_ENV

ROOT = Path(__file__).resolve().parent.parent
TORCH_LOCKS = {"head": ROOT / "requirements-cpu.lock", "worker": ROOT / "requirements-gpu.lock"}
TOKEN = "~/.ray/auth_token"  # Ray's token: the one file_mounts entry from outside the repository
# `pip install` options whose next word is their value, not a requirement
VALUE_OPTIONS = {"--python", "-c", "-e", "--extra-index-url", "--index-url", "--index-strategy"}
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
        if node_path == TOKEN:
            continue
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
    mounts = dict(cfg["file_mounts"])
    assert mounts.pop(TOKEN) == TOKEN  # the user's own token, to the same place on the nodes
    for remote, local in mounts.items():
        assert not Path(local).is_absolute(), f"{local}: relative to the repository root"
        assert (ROOT / local).exists(), f"file_mounts: {local} is not in the repository"
        assert remote.startswith("~/raymem/")
    locals_ = {Path(v) for v in mounts.values()}
    assert {Path("pyproject.toml"), Path("requirements.lock"), Path("raymem"),
            Path("requirements-gpu.lock"), Path("requirements-cpu.lock")} <= locals_
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

    # Every install is constrained by the lock and the node kind's torch build, or pins
    # what the lock lacks.
    for args in installs:
        constraints = [remote_to_local(cfg, args[i + 1]) for i, w in enumerate(args) if w == "-c"]
        assert constraints == [ROOT / "requirements.lock", TORCH_LOCKS[node]], args
        assert not {"-U", "--upgrade", "--pre"} & set(args), args
        for i, word in enumerate(args):
            if word.startswith("-") or (i and args[i - 1] in VALUE_OPTIONS):
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
    (uv,) = [c for c in commands if "uv.whl" in c]
    version = re.search(r"/uv-(\d+\.\d+\.\d+)-py3-none-", uv).group(1)
    assert f"'^uv {version.replace('.', '[.]')}( |$)'" in uv, uv  # it checks for the version it gets


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


# -- the CUDA stack: one torch build per node kind, images whose driver fits it ----------

def lock_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def test_torch_locks_name_the_builds_of_gpu_stack():
    assert lock_pins()["torch"] == gpu_stack.TORCH_VERSION == direct_pins()["torch"]
    assert lock_lines(TORCH_LOCKS["worker"]) == [gpu_stack.gpu_torch()] == ["torch==2.13.0+cu128"]
    assert lock_lines(TORCH_LOCKS["head"]) == [gpu_stack.cpu_torch()]
    # the wheel tag is the CUDA version, and its index is the tag's
    assert gpu_stack.GPU_WHEEL_TAG == "cu" + gpu_stack.CUDA.replace(".", "")
    assert gpu_stack.GPU_INDEX_URL.endswith("/" + gpu_stack.GPU_WHEEL_TAG)
    assert gpu_stack.CPU_INDEX_URL.endswith("/" + gpu_stack.CPU_WHEEL_TAG)
    assert "CPU wheel" not in (ROOT / "pyproject.toml").read_text()  # PyPI's Linux wheel is CUDA 13's


@pytest.mark.parametrize("node", ["head", "worker"])
@pytest.mark.parametrize("kind", FILES)
def test_each_node_kind_installs_its_torch_build_from_its_index(kind, node):
    (args,) = [a for a in install_commands(setup_commands(load(kind), node)) if "-e" in a]
    index = gpu_stack.GPU_INDEX_URL if node == "worker" else gpu_stack.CPU_INDEX_URL
    assert args[args.index("--extra-index-url") + 1] == index, args
    # PyPI's torch would win over the index's otherwise, or PyPI's other pins would be shadowed
    assert args[args.index("--index-strategy") + 1] == "unsafe-best-match", args


def gpu_image(cfg: dict) -> str:
    node = cfg["available_node_types"][GPU_TYPE]["node_config"]
    if "ImageId" in node:
        return node["ImageId"]
    (boot,) = [d for d in node["disks"] if d.get("boot")]
    return boot["initializeParams"]["sourceImage"]


@pytest.mark.parametrize("kind", FILES)
def test_gpu_image_driver_fits_the_torch_build(kind):
    cfg, image = load(kind), gpu_stack.IMAGES[FILES[kind].name]
    assert gpu_image(cfg) == image["image"]
    least = gpu_stack.version_tuple(gpu_stack.min_driver(gpu_stack.CUDA))
    assert (image["driver_branch"],) >= least[:1], (image, least)
    # an R570 driver is new enough for CUDA 12.8 ...
    assert image["driver_branch"] * 1000 >= least[0] * 1000 + least[1] // 1000
    # ... and too old for PyPI's CUDA 13 wheel: the case the GPU lock exists for
    assert (image["driver_branch"],) < gpu_stack.version_tuple(gpu_stack.min_driver("13.0"))[:1]
    if branch := re.search(r"-nvidia-(\d+)$", image["image"]):  # GCP families name their branch
        assert int(branch.group(1)) == image["driver_branch"]
        assert f"-{gpu_stack.GPU_WHEEL_TAG}-" in image["image"]  # and their CUDA
    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert "resolve:ssm" not in str(head) or head["ImageId"] == image["image"]  # one setup path


@pytest.mark.parametrize("kind", FILES)
def test_gpu_workers_check_their_stack_last_and_the_head_not(kind):
    cfg = load(kind)
    workers = setup_commands(cfg, "worker")
    assert workers[-1] == "~/raymem-env/bin/python -m raymem.nodecheck"
    assert not any("nodecheck" in c for c in setup_commands(cfg, "head"))


GOOD_SMI = "570.133.20, NVIDIA A10G\n"


@pytest.mark.parametrize("facts, expected", [
    (nodecheck.NodeFacts(GOOD_SMI, "2.13.0+cu128", "12.8", True), []),
    (nodecheck.NodeFacts("580.95.05, NVIDIA L4\n580.95.05, NVIDIA L4\n", "2.13.0+cu128", "12.8", True), []),
    # PyPI's wheel on an R570 image: the failure this check exists for
    (nodecheck.NodeFacts(GOOD_SMI, "2.13.0", "13.0", False),
     ["built for CUDA 13.0", "driver 570.133.20 is older than 580.65.06"]),
    (nodecheck.NodeFacts(GOOD_SMI, "2.13.0+cpu", None, False),
     ["is a CPU build; GPU nodes need torch==2.13.0+cu128 from https://download.pytorch.org/whl/cu128"]),
    (nodecheck.NodeFacts("560.35.03, Tesla T4\n", "2.13.0+cu128", "12.8", False),
     ["driver 560.35.03 is older than 570.26, the least CUDA 12.8"]),
    (nodecheck.NodeFacts(None, "2.13.0+cu128", "12.8", False, "No such file or directory: 'nvidia-smi'"),
     ["no NVIDIA driver: nvidia-smi did not run (No such file"]),
    (nodecheck.NodeFacts("", "2.13.0+cu128", "12.8", False), ["nvidia-smi lists no GPU"]),
    (nodecheck.NodeFacts(GOOD_SMI, "2.13.0+cu128", "12.8", False),
     ["torch.cuda.is_available() is False although nvidia-smi lists 1 GPU(s) with driver 570.133.20"]),
])
def test_nodecheck_problems(facts, expected):
    found = nodecheck.problems(facts)
    assert len(found) == len(expected), found
    for message, part in zip(found, expected):
        assert part in message, (part, message)


def test_nodecheck_main_fails_the_setup_with_one_message(monkeypatch, capsys):
    monkeypatch.setattr(nodecheck, "read_facts",
                        lambda: nodecheck.NodeFacts(GOOD_SMI, "2.13.0", "13.0", False))
    assert nodecheck.main() == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("raymem nodecheck: this GPU node cannot run raymem's GPU trials: ")
    monkeypatch.setattr(nodecheck, "read_facts",
                        lambda: nodecheck.NodeFacts(GOOD_SMI, "2.13.0+cu128", "12.8", True))
    assert nodecheck.main() == 0
    assert capsys.readouterr().out.strip() == ("raymem nodecheck: ok: driver 570.133.20, torch 2.13.0+cu128 "
                                               "(CUDA 12.8), 1 GPU(s): NVIDIA A10G")


def test_nodecheck_reads_a_node_without_a_driver(monkeypatch):
    """On this machine (no NVIDIA driver, a CPU torch): the real read, then both problems."""
    monkeypatch.setattr(nodecheck, "NVIDIA_SMI", ["nvidia-smi-not-installed-here"])
    facts = nodecheck.read_facts()
    assert facts.nvidia_smi is None and "nvidia-smi-not-installed-here" in facts.smi_error
    found = nodecheck.problems(facts)
    assert found[0].startswith("no NVIDIA driver")


# -- hardening: token auth, no unverified downloads ----------------------------------

@pytest.mark.parametrize("kind", FILES)
def test_ray_token_auth_on_every_node(kind):
    cfg = prepare_config(load(kind))
    assert LOOPBACK_ENV["RAY_AUTH_MODE"] == "token"  # as a study's local Ray
    for command in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert re.search(r"export RAY_AUTH_MODE=token && source ~/raymem-env/bin/activate && "
                         r"ray (start|stop)\b", command), command
    assert cfg["file_mounts"][TOKEN] == TOKEN
    (check,) = [c for c in cfg["setup_commands"] if "auth_token" in c]
    assert "test -s ~/.ray/auth_token" in check and "chmod 600 ~/.ray/auth_token" in check
    assert "ray get-auth-token --generate" in FILES[kind].read_text()  # the header says how


@pytest.mark.parametrize("kind", FILES)
def test_no_unverified_download_runs(kind):
    cfg = prepare_config(load(kind))
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in cfg[key]]
    for command in commands:
        assert not re.search(r"\|\s*(sudo\s+)?(env\s+\S+=\S+\s+)?(ba|z)?sh\b", command), command
        for download in re.finditer(r"curl [^&|;]*-o (\S+)", command):
            path = download.group(1)
            rest = command[download.end():]
            verified = re.search(r"sha256sum -c", rest)
            used = rest.find(path, rest.find(path) + 1)  # its first use after the check's own mention
            assert verified and verified.start() < used, f"{path} is used before its sha256 is checked"
    assert any("sha256sum -c" in c for c in commands)


# -- AWS -------------------------------------------------------------------------------

def test_aws_requires_imdsv2_on_every_node():
    for name, node_type in load("aws")["available_node_types"].items():
        options = node_type["node_config"]["MetadataOptions"]
        assert options["HttpTokens"] == "required", name
        assert options["HttpPutResponseHopLimit"] == 1, name  # no containers between


def test_aws_head_role_is_the_narrow_one_of_this_repository():
    cfg = load("aws")
    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"] == {"Name": "raymem-head"}  # not Ray's EC2+S3 full access
    policy = json.loads((ROOT / "iam/raymem-head-policy.json").read_text())
    allowed = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            assert "*" not in action, action  # no ec2:*, s3:*
            allowed.setdefault(action, []).append(statement)
    # what Ray's AWS node provider calls from the head
    assert {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:DescribeInstances",
            "ec2:DescribeInstanceTypes", "iam:PassRole", "ssm:GetParameters"} <= set(allowed)
    assert not any(a.startswith("iam:") and a != "iam:PassRole" for a in allowed)
    (terminate,) = allowed["ec2:TerminateInstances"]  # this cluster's nodes only
    assert terminate["Condition"] == {"StringEquals": {"aws:ResourceTag/ray-cluster-name": cfg["cluster_name"]}}
    (pass_role,) = allowed["iam:PassRole"]
    assert pass_role["Resource"].endswith(":role/" + cfg["available_node_types"][GPU_TYPE]["node_config"]
                                          ["IamInstanceProfile"]["Name"])
    worker = json.loads((ROOT / "iam/raymem-worker-policy.json").read_text())
    assert {a for s in worker["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                     else s["Action"])} <= {
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    text = FILES["aws"].read_text()
    assert "iam/raymem-head-policy.json" in text and "iam/raymem-$node-policy.json" in text


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
    head = resolved["available_node_types"][resolved["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"] == {"Name": "raymem-head"}  # the narrow role: Ray made none
    assert "ray-autoscaler-v1" not in str(resolved)


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
