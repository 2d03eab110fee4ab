"""cluster/aws-gpu.yaml and cluster/gcp-gpu.yaml, checked offline: Ray's own config check (what
`ray up` runs before it contacts a cloud), the security promises (no open port, token auth on
every `ray start`), Ray's AWS bootstrap against a local AWS mock, and the README's commands
against the YAMLs. A few seconds; no cloud, no network."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import jsonschema  # what Ray's validate_config uses; a dependency of ray itself
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = {"aws": CLUSTER / "aws-gpu.yaml", "gcp": CLUSTER / "gcp-gpu.yaml"}
TOKEN_PATH = "~/.ray/auth_token"


def load(name: str) -> dict:
    return yaml.safe_load(CONFIGS[name].read_text())


def ray_check(raw: dict) -> dict:
    """What `ray up` does to a config before any cloud call (ray/autoscaler/_private/commands.py
    `_bootstrap_config`): fill in the provider's defaults, then validate against
    ray/autoscaler/ray-schema.json plus Ray's own rules. Raises on a bad config."""
    full = prepare_config(copy.deepcopy(raw))
    validate_config(full)
    return full


def node_types(cfg: dict) -> tuple[dict, dict]:
    """(head type, {name: worker type})."""
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    return types[head], {k: v for k, v in types.items() if k != head}


def section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## A cluster you start.*?(?=^## )", text, re.S | re.M)
    assert m, "README.md has no section '## A cluster you start'"
    return m.group(0)


# --- Ray's schema check -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ray_accepts_the_config(name):
    full = ray_check(load(name))
    head, workers = node_types(full)
    assert full["provider"]["type"] == name
    assert workers, "no worker node type"


def _misspelled_top_level(c):
    c["max_worker"] = c.pop("max_workers")


def _misspelled_in_node_type(c):
    _, workers = node_types(c)
    w = next(iter(workers.values()))
    w["min_worker"] = w.pop("min_workers")


def _misspelled_auth(c):
    c["auth"]["ssh_usr"] = c["auth"].pop("ssh_user")


def _max_workers_as_text(c):
    c["max_workers"] = "4"


def _fractional_gpu(c):
    _, workers = node_types(c)
    next(iter(workers.values()))["resources"]["GPU"] = 0.5


def _commands_as_text(c):
    c["worker_start_ray_commands"] = "; ".join(c["worker_start_ray_commands"])


def _flag_as_text(c):
    c["file_mounts_sync_continuously"] = "false"


def _resources_missing(c):
    _, workers = node_types(c)
    del next(iter(workers.values()))["resources"]


BROKEN = {
    "misspelled top-level key": (_misspelled_top_level, jsonschema.ValidationError),
    "misspelled node-type key": (_misspelled_in_node_type, jsonschema.ValidationError),
    "misspelled auth key": (_misspelled_auth, jsonschema.ValidationError),
    "max_workers as a string": (_max_workers_as_text, jsonschema.ValidationError),
    "fractional GPU resource": (_fractional_gpu, jsonschema.ValidationError),
    "commands as one string": (_commands_as_text, jsonschema.ValidationError),
    "boolean as a string": (_flag_as_text, jsonschema.ValidationError),
    "node type without resources": (_resources_missing, jsonschema.ValidationError),
    "head type not a node type": (lambda c: c.update(head_node_type="nope"), ValueError),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_ray_rejects_a_broken_copy(name, broken):
    """The check is real: the same config with one mistake fails it."""
    mutate, error = BROKEN[broken]
    raw = load(name)
    mutate(raw)
    with pytest.raises(error):
        ray_check(raw)


# --- what the cluster is ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_head_and_autoscaled_gpu_workers(name):
    cfg = ray_check(load(name))
    head, workers = node_types(cfg)
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0  # trials, teachers, measurements go to workers
    for w in workers.values():
        assert w["min_workers"] == 0
        assert 1 <= w["max_workers"] <= cfg["max_workers"]
        assert w["resources"]["GPU"] >= 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_worker_packs_kd_prune_trials_on_its_gpu(name):
    """sweeps/kd_prune.yaml shares each GPU between 1/gpu trials of `cpu` CPUs each: the worker
    must have the CPUs for all of them, else the GPU idles part-used."""
    res = yaml.safe_load((ROOT / "sweeps" / "kd_prune.yaml").read_text())["search"]["resources"]
    _, workers = node_types(load(name))
    for w in workers.values():
        trials = int(w["resources"]["GPU"] / res["gpu"])
        assert w["resources"]["CPU"] >= trials * res["cpu"], (w["resources"], res)


def test_twins_install_and_start_ray_alike():
    aws, gcp = load("aws"), load("gcp")
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                "file_mounts", "rsync_exclude", "rsync_filter", "max_workers",
                "cluster_name"):
        assert aws[key] == gcp[key], key


# --- security ---------------------------------------------------------------------------------


def _start_commands(cfg: dict) -> list[str]:
    return cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_token_auth_on_every_ray_start(name):
    cfg = ray_check(load(name))
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if re.search(r"\bray start\b", c)]
        assert starts, f"{key} starts no Ray"
        for c in starts:
            assert re.search(r"\bRAY_AUTH_MODE=token\s+\S*ray start\b", c), c
    # the token reaches every node (head via ray up, workers from the head) at Ray's default path
    assert cfg["file_mounts"].get(TOKEN_PATH) == TOKEN_PATH
    assert any("chmod 600 " + TOKEN_PATH in c for c in cfg["setup_commands"])
    assert any("export RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dashboard_and_ray_ports_stay_private(name):
    cfg = ray_check(load(name))
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert all("--dashboard-host=127.0.0.1" in c for c in head), head
    every_command = " ".join(c for k, v in cfg.items() if k.endswith("_commands") for c in v)
    assert "0.0.0.0" not in every_command
    assert "security_group" not in cfg["provider"]  # no extra rules for a group Ray would make


def test_aws_nodes_use_one_premade_group():
    head, workers = node_types(load("aws"))
    groups = [t["node_config"].get("SecurityGroupIds") for t in [head, *workers.values()]]
    assert all(groups) and all(g == groups[0] for g in groups), groups
    assert len(groups[0]) == 1 and "REPLACE" in groups[0][0]  # an obvious placeholder


def test_gcp_nodes_sit_in_the_kdtune_network_with_its_tag():
    head, workers = node_types(load("gcp"))
    for t in [head, *workers.values()]:
        nc = t["node_config"]
        assert "kdtune-ray" in nc["tags"]["items"]
        # With networkInterfaces on every node type Ray's GCP bootstrap keeps them
        # (gcp/config.py `_configure_subnet`) instead of picking the project's default subnet.
        nets = [i["subnetwork"] for i in nc["networkInterfaces"]]
        assert nets == ["regions/us-central1/subnetworks/kdtune-subnet"], nets


@pytest.fixture
def aws_mock(monkeypatch, tmp_path):
    """moto's in-process AWS, fake credentials, and a HOME of its own (Ray writes its SSH key
    to ~/.ssh); Ray's cached boto clients cleared before and after."""
    import moto  # kdtune's dev extra
    import ray.autoscaler._private.aws.config as aws_config
    import ray.autoscaler._private.aws.utils as aws_utils

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-west-2",
                 "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
              "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)
    caches = (aws_utils.resource_cache, aws_utils.client_cache, aws_config._get_subnets_or_die)

    def clear():
        for c in caches:
            c.cache_clear()

    clear()
    with moto.mock_aws():
        yield aws_config
    clear()


def test_ray_aws_bootstrap_keeps_the_group_and_opens_nothing(aws_mock):
    """Ray's own AWS bootstrap (what `ray up` runs next, aws/config.py `bootstrap_aws`) on
    cluster/aws-gpu.yaml, with the README's group made in the mock: it uses that group on every
    node and creates none. The same config without SecurityGroupIds shows what it avoids: Ray
    creates a group that opens SSH to 0.0.0.0/0."""
    import boto3

    ec2 = boto3.client("ec2", region_name="us-west-2")
    iam = boto3.client("iam", region_name="us-west-2")
    # the head's profile, as after a first `ray up` (saves loading AWS's managed policies)
    iam.create_role(RoleName="ray-autoscaler-v1", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="ray-autoscaler-v1")
    iam.add_role_to_instance_profile(InstanceProfileName="ray-autoscaler-v1",
                                     RoleName="ray-autoscaler-v1")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    sg = ec2.create_security_group(GroupName="kdtune-ray", Description="kdtune",
                                   VpcId=vpc["VpcId"])["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}])
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg}]}])

    text = CONFIGS["aws"].read_text()
    text = re.sub(r"sg-REPLACE\w*", sg, text)
    text = re.sub(r"ami-REPLACE\w*", "ami-0123456789abcdef0", text)

    def groups():
        return {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}

    def open_to_world(g):
        return [p for p in g["IpPermissions"]
                if any(r["CidrIp"] == "0.0.0.0/0" for r in p.get("IpRanges", []))]

    before = set(groups())
    out = aws_mock.bootstrap_aws(ray_check(yaml.safe_load(text)))
    assert set(groups()) == before  # no group created
    for t in out["available_node_types"].values():
        assert t["node_config"]["SecurityGroupIds"] == [sg]
    assert not any(open_to_world(g) for g in groups().values())

    # control: Ray's default, which the YAML avoids
    raw = yaml.safe_load(text)
    for t in raw["available_node_types"].values():
        del t["node_config"]["SecurityGroupIds"]
    aws_mock.bootstrap_aws(ray_check(raw))
    made = [g for gid, g in groups().items() if gid not in before]
    assert made and any(p["FromPort"] == 22 for g in made for p in open_to_world(g))


# --- what the nodes install -------------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in (CLUSTER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name.split("[")[0]] = version
    return pins


def test_nodes_install_pinned_matching_versions():
    import ray

    pins = _pins()
    assert set(pins) == {"torch", "torchvision", "ray"}
    # `ray up` on this machine and Ray on the nodes must be the same release
    assert pins["ray"] == ray.__version__
    # torchvision 0.(N+15) goes with torch 2.N
    t_major, t_minor = map(int, pins["torch"].split(".")[:2])
    v_major, v_minor = map(int, pins["torchvision"].split(".")[:2])
    assert (t_major, v_major, v_minor) == (2, 0, t_minor + 15), pins


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_nodes_get_the_project_and_install_it(name):
    cfg = load(name)
    assert cfg["file_mounts"]["~/kdtune"] == "."  # `ray up` from the checkout's root
    install = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert any("-r ~/kdtune/cluster/requirements.txt" in c and "-e ~/kdtune" in c
               for c in install), install
    # the start commands use the venv that setup filled
    assert all("~/kdtune-venv/bin/ray " in c for c in _start_commands(cfg))
    assert "**/.git" in cfg["rsync_exclude"] and ".gitignore" in cfg["rsync_filter"]


# --- the README's commands against the YAMLs ----------------------------------------------------


def test_readme_commands_match_the_configs():
    text = section()
    aws, gcp = load("aws"), load("gcp")
    for verb in ("ray up", "ray attach", "ray dashboard", "ray down"):
        assert f"{verb} cluster/aws-gpu.yaml" in text, verb
    assert "cluster/gcp-gpu.yaml" in text
    assert "--address auto --out s3://" in text
    assert "ray get-auth-token --generate" in text and "RAY_AUTH_MODE=token" in text
    # AWS: the region the group is made in is the YAML's; SSH from one address only
    assert f"AWS_DEFAULT_REGION={aws['provider']['region']}" in text
    assert '--protocol tcp --port 22 \\\n  --cidr "$MYIP/32"' in text
    assert "UserIdGroupPairs=[{GroupId=$SG}]" in text
    # GCP: the tag, subnet and region of the firewall commands are the YAML's
    _, workers = node_types(gcp)
    nc = next(iter(workers.values()))["node_config"]
    tag = nc["tags"]["items"][0]
    _, region, _, subnet = nc["networkInterfaces"][0]["subnetwork"].split("/")
    assert f"--source-ranges=\"$MYIP/32\" --target-tags={tag}" in text
    assert f"--source-tags={tag} --target-tags={tag}" in text
    assert f"subnets create {subnet} " in text and f"--region={region}" in text
    assert gcp["provider"]["region"] == region
    # no command of the section opens anything to the world
    assert "0.0.0.0" not in "".join(re.findall(r"(?s)```bash\n(.*?)```", text))


# --- cluster/gpus.py ----------------------------------------------------------------------------


def _gpus_module():
    spec = importlib.util.spec_from_file_location("kdtune_cluster_gpus", CLUSTER / "gpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_gpus_waits_until_the_workers_have_joined():
    gpus = _gpus_module()
    seen = iter([0, 0, 1, 1, 2])
    clock, log = _Clock(), []
    assert gpus.wait_for_gpus(2, lambda: next(seen), 600, poll_s=10, clock=clock,
                              sleep=clock.sleep, log=log.append)
    assert clock.t == 40
    assert log == ["waiting for GPU workers: 0 of 2 GPU(s) so far",
                   "waiting for GPU workers: 1 of 2 GPU(s) so far", "2 GPU(s) in the cluster"]


def test_gpus_gives_up_after_the_timeout():
    gpus = _gpus_module()
    clock = _Clock()
    assert not gpus.wait_for_gpus(1, lambda: 0, 30, poll_s=10, clock=clock, sleep=clock.sleep,
                                  log=lambda s: None)
    assert clock.t == 30


def test_gpus_refuses_a_negative_count(capsys):
    with pytest.raises(SystemExit) as e:
        _gpus_module().main(["-1"])
    assert e.value.code == 2
    assert "gpus: got -1; allowed: 0 or more" in capsys.readouterr().err
