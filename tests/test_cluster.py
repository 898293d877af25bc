"""The cluster configs under cluster/ are valid Ray launcher configs and keep their promises.

Offline only: Ray's own `prepare_config` + `validate_config` fill in the provider
defaults and check the schema without any cloud call (a socket guard fails the
test if anything tries the network), then each property the configs promise is
asserted directly: GPU workers scaling from zero, a GPU-less head, the pinned
image, the README install command, MLflow and Ray kept off the internet, no
credentials. cluster/local.sh is checked statically and through its `env`
command; its start/stop cycle runs only with METAXL_TEST_LOCAL_CLUSTER=1 (it
starts three Ray nodes and an MLflow server, about a minute on a small machine).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
LOCAL_SH = CLUSTER / "local.sh"

README_INSTALL = 'pip install -e ".[dev]"'  # the README's install command, verbatim
PROJECT_MOUNT = "~/metaxl"
DATA_MOUNT = "~/data"
TOKEN_FILE = "~/.ray/auth_token"
MLFLOW_PORT = 5000
WORLD = {"0.0.0.0/0", "::/0"}

# Instance families with GPUs, to prove the head has none.
AWS_GPU_FAMILIES = re.compile(r"^(p\d|g\d|gr\d|dl\d|trn\d|inf\d|vt\d)", re.IGNORECASE)
GCP_GPU_MACHINES = re.compile(r"^(a2|a3|a4|g2|g4)-", re.IGNORECASE)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(params=YAMLS, ids=lambda p: p.name)
def cfg_path(request) -> Path:
    return request.param


@pytest.fixture
def cfg(cfg_path) -> dict:
    return load(cfg_path)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: validation must be offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted during offline validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def ray_validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def head_and_workers(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    return head, workers


def docker_env(config: dict) -> dict[str, str]:
    env = {}
    for option in config["docker"].get("run_options", []):
        for token in shlex.split(option):
            if token.startswith(("--env=", "-e=")):
                key, _, value = token.split("=", 1)[1].partition("=")
                env[key] = value
    return env


def docker_volumes(config: dict) -> dict[str, str]:
    """container path -> host path for --volume options."""
    volumes = {}
    for option in config["docker"].get("run_options", []):
        for token in shlex.split(option):
            if token.startswith("--volume="):
                host, container = token.split("=", 1)[1].split(":")[:2]
                volumes[container] = host
    return volumes


def mlflow_server_commands(commands: list[str]) -> list[list[str]]:
    """The argument lists of every `mlflow server` invocation in `commands`."""
    found = []
    for command in commands:
        for match in re.finditer(r"mlflow server\b([^'&;|>]*)", command):
            found.append(shlex.split(match.group(1)))
    return found


def option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- Ray's own validation


def test_both_clouds_have_a_config():
    assert {p.name for p in YAMLS} >= {"gpu.yaml", "gpu-gcp.yaml"}


def test_ray_accepts_config_offline(cfg, no_network):
    prepared = ray_validate(cfg)
    # prepare_config really merged the provider defaults and node-type limits.
    assert prepared["provider"]["type"] in ("aws", "gcp")
    assert prepared["available_node_types"][cfg["head_node_type"]]["max_workers"] == 0
    assert "cluster_synced_files" in prepared


def test_ray_validation_is_live(cfg, no_network):
    """The same validator rejects a broken copy, so the test above can fail."""
    from jsonschema import ValidationError

    broken = copy.deepcopy(cfg)
    _, workers = head_and_workers(broken)
    next(iter(workers.values()))["resources"]["GPU"] = "one"
    with pytest.raises(ValidationError):
        ray_validate(broken)

    broken = copy.deepcopy(cfg)
    broken["head_node_type"] = "no-such-node-type"
    with pytest.raises((ValueError, KeyError)):
        ray_validate(broken)


# ---------------------------------------------------------------- nodes


def test_gpu_workers_scale_from_zero(cfg):
    _, workers = head_and_workers(cfg)
    assert workers, "no worker node type"
    for name, worker in workers.items():
        assert worker["min_workers"] == 0, f"{name}: min_workers must be 0 (scale to zero)"
        assert worker["resources"].get("GPU", 0) >= 1, f"{name}: no GPU resource"
        assert 1 <= worker["max_workers"] <= cfg["max_workers"], f"{name}: max_workers"
    # The GPU the resources promise is really attached.
    for worker in workers.values():
        node = worker["node_config"]
        if cfg["provider"]["type"] == "aws":
            assert AWS_GPU_FAMILIES.match(node["InstanceType"]), node["InstanceType"]
        else:
            assert node.get("guestAccelerators") or GCP_GPU_MACHINES.match(node["machineType"])
            if node.get("guestAccelerators"):
                assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"
    # Workers see their GPU inside the container.
    assert "--gpus=all" in cfg["docker"].get("worker_run_options", [])
    assert "--gpus" not in " ".join(cfg["docker"].get("run_options", []))  # not on the head


def test_head_has_no_gpu(cfg):
    head, _ = head_and_workers(cfg)
    assert head["resources"].get("GPU", 0) == 0
    node = head["node_config"]
    if cfg["provider"]["type"] == "aws":
        assert not AWS_GPU_FAMILIES.match(node["InstanceType"]), node["InstanceType"]
    else:
        assert not node.get("guestAccelerators")
        assert not GCP_GPU_MACHINES.match(node["machineType"])


# ---------------------------------------------------------------- image and install


def test_docker_image_pinned_to_project_ray_and_python(cfg, cfg_path):
    import ray

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(d for d in pins if d.startswith("ray"))
    assert ray_pin.endswith(f"=={ray.__version__}"), (ray_pin, ray.__version__)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert py == "py311"
    expected = f"rayproject/ray:{ray.__version__}-{py}-gpu"
    docker = cfg["docker"]
    assert docker["image"] == expected
    for key in ("head_image", "worker_image"):
        assert docker.get(key, expected) == expected
    for node_type in cfg["available_node_types"].values():
        assert "docker" not in node_type, "a node type overrides the pinned image"
    assert not re.search(r"rayproject/[\w-]+:latest", cfg_path.read_text())


def test_setup_installs_checkout_with_readme_command(cfg):
    assert cfg["file_mounts"][PROJECT_MOUNT] == "."
    assert f"cd {PROJECT_MOUNT} && {README_INSTALL}" in cfg["setup_commands"]
    # setup_commands run on every node, before the head/worker specific ones.
    prepared = ray_validate(cfg)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert f"cd {PROJECT_MOUNT} && {README_INSTALL}" in prepared[key]


def test_readme_install_command_matches():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "pip install" not in readme:
        pytest.skip("README has no install section yet")
    assert README_INSTALL in readme


def test_data_and_caches(cfg):
    env = docker_env(cfg)
    # Data: the ~/data mount is where METAXL_DATA_ROOT points (container home /home/ray).
    assert DATA_MOUNT in cfg["file_mounts"]
    assert env["METAXL_DATA_ROOT"] == DATA_MOUNT.replace("~", "/home/ray")
    # Caches on a host volume of each node, not per trial.
    volumes = docker_volumes(cfg)
    for key in ("HF_HOME", "METAXL_CACHE"):
        assert any(env[key].startswith(c + "/") for c in volumes), (key, env[key], volumes)
    # Every node type that runs trials (the GPU workers) resolves the encoders once at setup.
    prefetch = " ".join(cfg["worker_setup_commands"])
    assert "load_encoder" in prefetch and "xlm-roberta-base" in prefetch
    host_dirs = set(volumes.values())
    init = " ".join(cfg.get("initialization_commands", []))
    for worker in head_and_workers(cfg)[1].values():
        init_w = " ".join(worker.get("initialization_commands", cfg["initialization_commands"]))
        assert all(f"mkdir -p {d}" in init_w for d in host_dirs)
    assert all(f"mkdir -p {d}" in init for d in host_dirs)


def test_rsync_skips_git_and_ignored_files(cfg):
    assert ".gitignore" in cfg["rsync_filter"]
    assert "**/.git" in cfg["rsync_exclude"]


# ---------------------------------------------------------------- security


def test_ray_token_auth_and_private_dashboard(cfg):
    assert docker_env(cfg).get("RAY_AUTH_MODE") == "token"
    assert cfg["file_mounts"][TOKEN_FILE] == TOKEN_FILE  # from the user's home, not the repo
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert re.search(r"ray start --head\b", head_start)
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start)
    all_ray_starts = head_start + " ".join(cfg["worker_start_ray_commands"])
    assert "0.0.0.0" not in re.sub(r"mlflow server[^&]*", "", all_ray_starts)
    assert "--ray-debugger-external" not in all_ray_starts


def test_mlflow_server_on_head_not_public(cfg):
    servers = mlflow_server_commands(cfg["head_start_ray_commands"])
    assert len(servers) == 1, "exactly one mlflow server, started on the head"
    args = servers[0]
    assert option(args, "--backend-store-uri").startswith("sqlite:////home/ray/")
    assert int(option(args, "--port")) == MLFLOW_PORT
    host = option(args, "--host")
    address = ipaddress.ip_address(host)
    assert address.is_private or address.is_loopback or address.is_unspecified, host
    if address.is_unspecified:  # all interfaces: the network rules must keep 5000 closed
        assert not opened_ports(cfg) - {22}
    for unsafe in ("--disable-security-middleware", "--allowed-hosts", "--cors-allowed-origins"):
        assert unsafe not in args
    # In the background, so the head's start commands finish.
    start = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assert start.rstrip().endswith("&")
    for key in ("worker_start_ray_commands", "worker_setup_commands", "setup_commands"):
        assert not mlflow_server_commands(cfg[key]), f"mlflow server in {key}"


def opened_ports(cfg) -> set[int]:
    """Ports some rule admits from an address range (not from the cluster itself)."""
    ports: set[int] = set()
    if cfg["provider"]["type"] == "aws":
        for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
            if rule.get("IpRanges") or rule.get("Ipv6Ranges") or rule.get("PrefixListIds"):
                if str(rule.get("IpProtocol")) == "-1":
                    ports.update(range(65536))
                else:
                    ports.update(range(int(rule["FromPort"]), int(rule["ToPort"]) + 1))
    else:
        for rule in gcp_firewall_rules(cfg):
            if rule["source-ranges"]:
                for allow in rule["allow"].split(","):
                    _, _, port = allow.partition(":")
                    if not port:
                        ports.update(range(65536))
                    else:
                        low, _, high = port.partition("-")
                        ports.update(range(int(low), int(high or low) + 1))
    return ports


def gcp_firewall_rules(cfg) -> list[dict]:
    """The `gcloud compute firewall-rules create` commands documented in the GCP config."""
    text = (CLUSTER / "gpu-gcp.yaml").read_text(encoding="utf-8")
    comments = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    comments = comments.replace("\\\n", " ")
    rules = []
    for line in comments.splitlines():
        if "gcloud compute firewall-rules create" in line:
            args = shlex.split(line.replace('"$(curl -s https://checkip.amazonaws.com)/32"', "MYIP/32"))
            rules.append({
                "name": args[4],
                "allow": option(args, "--allow") or "",
                "source-ranges": option(args, "--source-ranges"),
                "source-tags": option(args, "--source-tags"),
                "target-tags": option(args, "--target-tags"),
                "network": option(args, "--network"),
            })
    return rules


def test_aws_ingress_is_ssh_from_one_cidr():
    cfg = load(CLUSTER / "gpu.yaml")
    rules = cfg["provider"]["security_group"]["IpPermissions"]
    assert rules
    for rule in rules:
        assert str(rule["IpProtocol"]).lower() == "tcp"
        assert (rule["FromPort"], rule["ToPort"]) == (22, 22), rule
        assert not rule.get("Ipv6Ranges") and not rule.get("PrefixListIds")
        for ip_range in rule["IpRanges"]:
            network = ipaddress.ip_network(ip_range["CidrIp"])
            assert str(network) not in WORLD and network.prefixlen >= 16, network
    assert opened_ports(cfg) == {22}
    # Nodes use the group above (Ray adds intra-group traffic), not some other group.
    for node_type in cfg["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"]
    # No public dashboard/GCS/MLflow port anywhere in the file.
    text = (CLUSTER / "gpu.yaml").read_text()
    assert "0.0.0.0/0" not in re.sub(r"#.*", "", text)


def test_gcp_nodes_on_firewalled_network():
    cfg = load(CLUSTER / "gpu-gcp.yaml")
    rules = gcp_firewall_rules(cfg)
    assert {r["name"] for r in rules} == {"metaxl-ray-ssh", "metaxl-ray-internal"}
    ssh = next(r for r in rules if r["source-ranges"])
    assert ssh["allow"] == "tcp:22" and ssh["source-ranges"] not in WORLD
    internal = next(r for r in rules if not r["source-ranges"])
    assert internal["source-tags"] == internal["target-tags"] == "metaxl-ray"
    assert opened_ports(cfg) == {22}
    for name, node_type in cfg["available_node_types"].items():
        node = node_type["node_config"]
        assert "metaxl-ray" in node["tags"]["items"], name
        assert [n["network"] for n in node["networkInterfaces"]] == ["global/networks/metaxl-ray"]
        assert all(r["network"] == "metaxl-ray" for r in rules)


# ---------------------------------------------------------------- credentials

SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"aws_(secret_access_key|access_key_id|session_token)\s*[:=]", re.IGNORECASE),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"private_key\"\s*:"),  # GCP service-account JSON
    re.compile(r"\b(ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"\b[0-9a-f]{40,}\b"),  # hex tokens, e.g. a Ray auth token
    re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),  # AWS secret key shape
    re.compile(r"(password|passwd|secret|api[_-]?key)\s*[:=]\s*['\"]?[^\s'\"$<{]{6,}", re.IGNORECASE),
]


def secrets_in(text: str) -> list[str]:
    return [m.group(0) for p in SECRET_PATTERNS for m in p.finditer(text)]


def test_secret_scanner_catches_samples():
    for sample in (
        "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key: abc",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "token " + "0123456789abcdef" * 4,
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "password = hunter22",
    ):
        assert secrets_in(sample), sample


@pytest.mark.parametrize("path", sorted(p for p in CLUSTER.iterdir() if p.is_file()),
                         ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    assert not secrets_in(path.read_text(encoding="utf-8")), path
    if path.suffix == ".yaml":
        cfg = load(path)
        assert "gcp_credentials" not in cfg["provider"]
        assert set(cfg.get("auth", {})) <= {"ssh_user"}  # Ray makes the key pair


# ---------------------------------------------------------------- documentation


def test_every_top_level_key_is_commented():
    lines = (CLUSTER / "gpu.yaml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line):
            assert i and lines[i - 1].startswith("#"), f"gpu.yaml:{i + 1}: {line!r} has no comment"


# ---------------------------------------------------------------- local multi-node recipe


def test_local_script_commands():
    text = LOCAL_SH.read_text(encoding="utf-8")
    assert os.access(LOCAL_SH, os.X_OK)
    assert subprocess.run(["bash", "-n", str(LOCAL_SH)], check=False).returncode == 0
    assert re.search(r"ray start --head .*--port", text)
    assert "--dashboard-host 127.0.0.1" in text
    assert text.count("--disable-usage-stats") >= 2  # head and workers
    assert re.search(r'ray start --block --address "\$ADDRESS"', text)
    assert re.search(r"mlflow server --host 127\.0\.0\.1 ", text)
    assert "RAY_AUTH_MODE=token" in text
    # Stops only what it started: by recorded PID, never every Ray on the machine.
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bray stop\b|\bpkill\b|\bkillall\b", code)


def test_local_script_env_and_usage(tmp_path):
    env = {**os.environ, "METAXL_LOCAL_DIR": str(tmp_path), "METAXL_RAY_PORT": "6399",
           "METAXL_MLFLOW_PORT": "5099"}
    out = subprocess.run(["bash", str(LOCAL_SH), "env"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "export RAY_ADDRESS=127.0.0.1:6399" in out
    assert "export RAY_AUTH_MODE=token" in out
    assert f"export RAY_AUTH_TOKEN_PATH={tmp_path}/auth_token" in out
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5099" in out
    usage = subprocess.run(["bash", str(LOCAL_SH)], env=env, capture_output=True, text=True,
                           check=False)
    assert usage.returncode == 2 and "start" in usage.stderr
    stop = subprocess.run(["bash", str(LOCAL_SH), "stop"], env=env, capture_output=True,
                          text=True, check=False)
    assert stop.returncode == 0 and "nothing recorded" in stop.stderr


def test_local_recipe_documented():
    doc = (CLUSTER / "local.md").read_text(encoding="utf-8")
    for needle in ("ray start --head", "--dashboard-host 127.0.0.1", "ray start --address",
                   "mlflow server --host 127.0.0.1", "--address auto",
                   "--mlflow-uri http://127.0.0.1:5000", "cluster/local.sh stop"):
        assert needle in doc, needle


@pytest.mark.skipif(os.environ.get("METAXL_TEST_LOCAL_CLUSTER") != "1",
                    reason="starts 3 Ray nodes + MLflow (~1 min); set METAXL_TEST_LOCAL_CLUSTER=1")
def test_local_cluster_start_stop(tmp_path):
    bindir = str(Path(sys.executable).parent)
    if not shutil.which("mlflow", path=bindir) or not shutil.which("ray", path=bindir):
        pytest.skip("ray/mlflow CLIs not next to the test interpreter")
    ray_tmp = f"/tmp/rmx-{os.getpid()}"  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"],
           "METAXL_LOCAL_DIR": str(tmp_path), "METAXL_RAY_TEMP_DIR": ray_tmp,
           "METAXL_OBJECT_STORE_MB": "100", "METAXL_RAY_PORT": "6397",
           "METAXL_MLFLOW_PORT": "5097", "METAXL_DASHBOARD_PORT": "8297"}

    def run(*args):
        return subprocess.run(["bash", str(LOCAL_SH), *args], env=env, capture_output=True,
                              text=True, timeout=600, check=False)

    try:
        started = run("start", "2")
        assert started.returncode == 0, started.stderr[-3000:]
        status = run("status")
        assert status.returncode == 0 and "ray nodes alive: 3" in status.stdout, status.stdout
    finally:
        stopped = run("stop")
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not (tmp_path / "pids").exists()
    pids = [int(m.group(1)) for m in re.finditer(r"\(pid (\d+)\)", started.stderr)]
    assert len(pids) == 4  # head, 2 workers, mlflow
    for pid in pids if sys.platform == "linux" else []:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still running after stop"
