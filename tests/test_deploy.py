"""What ships in deploy/ is checked here, offline: Kubernetes manifests against the API
schemas of current Kubernetes versions (kubernetes-validate, strict: an unknown field is an
error), the Containerfiles against the repository and the installed commands, the systemd
units against ``systemd-analyze security``, and the S3 policies against the calls the S3
store makes. No image is built (no registry is reachable), so what can go wrong in a build
is checked instead: every file an image copies exists, what it installs is a distribution
here, and its entrypoint is a real command of the installed package.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from custos.cli.main import build_parser
from tests import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
# The newest schemas the validator ships, and the oldest Kubernetes release still maintained
# upstream that has every field used here (the native preStop sleep, appArmorProfile).
K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.31.0")
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# Created by hand from the operator's files (docs/operations.md), not shipped as manifests.
CREATED_BY_HAND = {("ConfigMap", "custos", "custos-signer-set"), ("ConfigMap", "custos-agent", "custos-agent-ca")}


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def every_doc() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in docs_of(p)]


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in every_doc() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def parses_as_custos(argv: list[str]) -> None:
    """``custos ARGV`` is a real command line of the installed package (argparse exits 2 if not)."""
    build_parser(argv).parse_args(argv)


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_validate_against_the_kubernetes_api(path: Path, version: str) -> None:
    for doc in docs_of(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_what_the_api_server_would() -> None:
    dep = find("Deployment", "custos-controlplane")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS if "example" not in p.name)


def test_every_referenced_secret_and_configmap_is_shipped_or_documented() -> None:
    shipped = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in every_doc()}
    for workload in (d for d in every_doc() if d["kind"] in ("Deployment", "DaemonSet")):
        ns, pod = workload["metadata"]["namespace"], workload["spec"]["template"]["spec"]
        for vol in pod["volumes"]:
            if "secret" in vol:
                assert ("Secret", ns, vol["secret"]["secretName"]) in shipped
            if "configMap" in vol:
                ref = ("ConfigMap", ns, vol["configMap"]["name"])
                assert ref in shipped or ref in CREATED_BY_HAND, ref
        names = {v["name"] for v in pod["volumes"]}
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= names
        assert (workload["spec"]["selector"]["matchLabels"].items()
                <= workload["spec"]["template"]["metadata"]["labels"].items())
    ops = (ROOT / "docs" / "operations.md").read_text()
    for _, _, name in CREATED_BY_HAND:
        assert name in ops


def controlplane_toml() -> str:
    return str(find("ConfigMap", "custos-controlplane")["data"]["controlplane.toml"])


def test_the_controlplane_configmap_is_a_config_the_server_accepts(tmp_path: Path) -> None:
    from custos.controlplane.config import load_config

    path = tmp_path / "controlplane.toml"
    path.write_text(controlplane_toml())
    cfg = load_config(path)
    assert cfg.probe_listen.endswith(":8080") and cfg.store_url.startswith("etcd://")
    assert "access_key" not in cfg.blobs and "secret_key_file" not in cfg.blobs  # the default chain
    assert cfg.keys["provider"] == "vault"


def _mounted(path: str, mounts: list[dict[str, Any]]) -> bool:
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts)


def test_the_controlplane_deployment_survives_a_dead_replica_and_is_probed_on_readyz() -> None:
    dep = find("Deployment", "custos-controlplane")
    pdb = find("PodDisruptionBudget", "custos-controlplane")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]
    assert pdb["spec"]["selector"] == spec["selector"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    raw = tomllib.loads(controlplane_toml())
    assert ports["grpc"] == int(raw["listen"].rsplit(":", 1)[1])
    assert ports["enroll"] == int(raw["enroll_listen"].rsplit(":", 1)[1])
    assert ports["probes"] == int(raw["server"]["probe_listen"].rsplit(":", 1)[1])
    assert ports["metrics"] == int(raw["metrics"]["listen"].rsplit(":", 1)[1])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    sc, psc = c["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] != 0 and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and pod["automountServiceAccountToken"] is False
    # Every file the config names is in a mounted volume.
    files = re.findall(r'"(/[^"]+)"', controlplane_toml())
    assert files and all(_mounted(f, c["volumeMounts"]) for f in files), files
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert _mounted(env["AWS_WEB_IDENTITY_TOKEN_FILE"], c["volumeMounts"])
    parses_as_custos(c["args"])


def test_the_network_policies_deny_by_default_and_open_only_the_served_ports() -> None:
    deny = find("NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    cp = find("NetworkPolicy", "custos-controlplane")
    opened = {p["port"] for rule in cp["spec"]["ingress"] for p in rule["ports"]}
    dep = find("Deployment", "custos-controlplane")
    assert opened == {p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    agent = find("NetworkPolicy", "custos-agent")
    assert {p["port"] for rule in agent["spec"]["ingress"] for p in rule["ports"]} == {9101}


def test_the_agent_daemonset_has_the_host_access_it_needs_and_no_more() -> None:
    ds = find("DaemonSet", "custos-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC") and pod["automountServiceAccountToken"] is False
    (agent,) = pod["containers"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH", "SYS_PTRACE", "KILL"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"state": "/var/lib/custos-agent", "enroll-token": "/etc/custos/enroll",
                    "models": "/models", "data": "/data"}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    cfg = tomllib.loads(find("ConfigMap", "custos-agent")["data"]["agent.toml"])
    for root in cfg["scan"]["roots"]:  # scanned where they are on the host, read-only
        (name,) = [n for n, p in host.items() if p == root]
        assert mounts[name]["mountPath"] == root and mounts[name]["readOnly"] is True
    assert mounts["state"]["mountPath"] == cfg["state_dir"] and not mounts["state"].get("readOnly")
    for init in pod["initContainers"]:
        isc = init["securityContext"]
        assert isc["capabilities"] == {"drop": ["ALL"]} and isc["allowPrivilegeEscalation"] is False
        host_mounts = {m["name"] for m in init["volumeMounts"]} & set(host)
        assert host_mounts == ({"state", "enroll-token"} if init["name"] == "enroll" else set()), init["name"]
    parses_as_custos(agent["args"])


def test_the_agent_config_renders_per_node_and_loads(tmp_path: Path) -> None:
    from custos.agent.config import load_agent_config

    ds = find("DaemonSet", "custos-agent")
    render = next(c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == "render-config")
    assert render["command"][:2] == ["python", "-c"]
    code = render["command"][2]
    template_dir, out_dir = tmp_path / "template", tmp_path / "out"
    template_dir.mkdir()
    out_dir.mkdir()
    (template_dir / "agent.toml").write_text(find("ConfigMap", "custos-agent")["data"]["agent.toml"])
    code = code.replace("/etc/custos/agent-template", str(template_dir)).replace("/run/custos-config", str(out_dir))
    subprocess.run([sys.executable, "-c", code], env={"NODE_NAME": "GPU-Node-17.zone-a"}, check=True, timeout=30)
    cfg = load_agent_config(out_dir / "agent.toml")
    assert cfg.name == "gpu-node-17.zone-a" and cfg.addr == "custos.custos.svc:7443"


def test_the_agent_enrolls_once_with_a_real_command() -> None:
    ds = find("DaemonSet", "custos-agent")
    enroll = next(c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == "enroll")
    assert enroll["command"][:2] == ["sh", "-c"]
    script = enroll["command"][2]
    assert script.startswith("test -e /var/lib/custos-agent/identity ||")
    argv = shlex.split(script.split("exec custos ", 1)[1].replace('"$(echo "$NODE_NAME" | tr \'A-Z\' \'a-z\')"',
                                                                 "node-1"))
    parses_as_custos(argv)
    assert argv[argv.index("--state-dir") + 1] == "/var/lib/custos-agent"


# -- Containerfiles --------------------------------------------------------------------------

CONTAINERFILES = sorted((DEPLOY / "containers").glob("*.Containerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", CONTAINERFILES, ids=[p.name for p in CONTAINERFILES])
def test_every_file_an_image_copies_exists(path: Path) -> None:
    copies = [rest for word, rest in instructions(path) if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        args = shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            continue
        *sources, _ = [a for a in args if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src}: no such file in the build context"


@pytest.mark.parametrize("path", CONTAINERFILES, ids=[p.name for p in CONTAINERFILES])
def test_an_image_installs_distributions_of_this_repository_and_runs_their_command(path: Path) -> None:
    steps = instructions(path)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert entry == ["custos"] and "custos" in scripts
    parses_as_custos(cmd)
    installs = [r for w, r in steps if w == "RUN" and "pip install" in r]
    assert len(installs) == 1
    targets = shlex.split(installs[0].split("pip install", 1)[1].split("&&", 1)[0])
    for target in targets:
        where, _, extras = target.partition("[")
        project = tomllib.loads((ROOT / where / "pyproject.toml").read_text())["project"]
        for extra in filter(None, extras.rstrip("]").split(",")):
            assert extra in project.get("optional-dependencies", {}), target
    role = {"server": "controlplane", "agent": "agent"}[cmd[0]]
    assert f"./{role}" in [t.partition("[")[0] for t in targets], "the image must install the command it runs"
    user = next(rest for word, rest in steps if word == "USER")
    assert (user == "0:0") == (role == "agent"), "only the agent image runs as root"
    image = (find("Deployment", "custos-controlplane") if role == "controlplane" else find("DaemonSet", "custos-agent"))
    container = image["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].rsplit(":", 1)[0].endswith(f"/custos/{role}")


# -- systemd ---------------------------------------------------------------------------------

UNITS = DEPLOY / "systemd"
SERVER_HARDENING = {
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "PrivateUsers": "yes", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectProc": "invisible",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
}


def unit(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def exposure(path: Path) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def test_the_server_unit_is_hardened_below_exposure_3() -> None:
    u = unit("custos-server.service")
    for key, value in SERVER_HARDENING.items():
        assert u.get(key) == [value], key
    assert u["User"] != ["root"] and u["Restart"] == ["always"]
    if shutil.which("systemd-analyze") is not None:  # the score itself, where systemd is installed
        assert exposure(UNITS / "custos-server.service") < 3.0


def test_the_agent_unit_stops_workloads_with_it_in_its_own_order() -> None:
    from custos.agent.config import AgentConfig

    u = unit("custos-agent.service")
    # Documented intent (docs/agent.md): the agent's workloads stop with it. SIGTERM to the
    # agent alone, then SIGKILL to whatever is left in its cgroup.
    assert u["KillMode"] == ["mixed"] and u["SendSIGKILL"] == ["yes"] and u["Restart"] == ["always"]
    stop_grace = AgentConfig.__dataclass_fields__["stop_grace"].default
    assert float(u["TimeoutStopSec"][0]) >= 3 * float(stop_grace)  # type: ignore[arg-type]
    assert "workloads and wipes their plaintext when it is itself" in (ROOT / "docs" / "agent.md").read_text()
    # GPUs and the scan roots stay the host's.
    for absent in ("PrivateDevices", "ProtectHome", "PrivateTmp", "PrivatePIDs", "ProtectProc"):
        assert absent not in u, absent
    caps = set(u["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL",
                    "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"}


@pytest.mark.parametrize("name", ["custos-server.service", "custos-agent.service"])
def test_a_unit_starts_a_real_command(name: str) -> None:
    argv = shlex.split(unit(name)["ExecStart"][0])
    assert Path(argv[0]).name == "custos"
    parses_as_custos(argv[1:])


# -- S3 policies -----------------------------------------------------------------------------

# The IAM action each S3 API call of custos.blobs.s3 needs.
IAM_ACTION = {
    "put_object": "s3:PutObject", "create_multipart_upload": "s3:PutObject", "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject", "abort_multipart_upload": "s3:AbortMultipartUpload",
    "list_parts": "s3:ListMultipartUploadParts", "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "head_object": "s3:GetObject", "get_object": "s3:GetObject", "delete_object": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket", "head_bucket": "s3:ListBucket",
}
# What each role calls: the control plane checks, reads headers and crypto-shreds; agents pull;
# pushers upload (resumably) and read back headers.
ROLE_CALLS = {
    "controlplane": {"head_bucket", "head_object", "get_object", "delete_object", "list_objects_v2"},
    "agent": {"head_bucket", "head_object", "get_object"},
    "pusher": {"head_bucket", "head_object", "get_object", "put_object", "create_multipart_upload",
               "upload_part", "complete_multipart_upload", "abort_multipart_upload", "list_parts",
               "list_multipart_uploads"},
}


def s3_calls() -> set[str]:
    src = (ROOT / "custos" / "blobs" / "s3.py").read_text()
    return set(re.findall(r"self\._client\.(\w+)\(", src)) | set(re.findall(r'get_paginator\("(\w+)"\)', src))


def granted(policy: dict[str, Any]) -> set[str]:
    actions: set[str] = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions |= set([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    return actions


def test_every_s3_call_is_known_to_the_policies() -> None:
    calls = s3_calls() - {"close", "get_paginator"}
    assert calls == set(IAM_ACTION), "a new S3 call: name its IAM action and the roles that make it"
    assert set().union(*ROLE_CALLS.values()) == calls


@pytest.mark.parametrize("role", sorted(ROLE_CALLS))
def test_each_role_is_granted_exactly_what_it_calls(role: str) -> None:
    policy = json.loads((DEPLOY / "s3" / f"iam-{role}.json").read_text())
    assert granted(policy) == {IAM_ACTION[c] for c in ROLE_CALLS[role]}
    for st in policy["Statement"]:
        bucket_level = set(st["Action"]) <= {"s3:ListBucket", "s3:ListBucketMultipartUploads"}
        want = "arn:aws:s3:::custos-weights" + ("" if bucket_level else "/prod/*")
        assert st["Resource"] == want


def test_the_bucket_policy_refuses_plain_http_strangers_and_versioning() -> None:
    policy = json.loads((DEPLOY / "s3" / "bucket-policy.json").read_text())
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert all(st["Effect"] == "Deny" for st in policy["Statement"])
    assert by_sid["DenyPlainHttp"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    allowed = by_sid["DenyEveryoneButCustosRoles"]["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    assert {a.rsplit("/", 1)[1] for a in allowed} == {f"custos-{r}" for r in ROLE_CALLS} | {"custos-storage-admin"}
    # Versioning would keep crypto-shredded ciphertext (docs/blobs.md): only the admin may touch it.
    assert "s3:PutBucketVersioning" in by_sid["OnlyTheStorageAdminChangesTheBucket"]["Action"]


# -- the operations guide ----------------------------------------------------------------------


def test_the_signer_ceremony_of_the_operations_guide_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ast

    from custos.cli.main import main
    from custos.core.signers import SignerSet

    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "operations.md").read_text(), re.S)
    m = re.search(r"names = (\[.*?\])", code)
    assert m
    for name in ast.literal_eval(m.group(1)):
        assert main(["signer", "keygen", "--name", name, "--no-passphrase", str(tmp_path / f"{name}.key")]) == 0
    capsys.readouterr()
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    v1 = SignerSet.decode((tmp_path / "signer-set-v1").read_bytes())
    assert v1.version == 1 and v1.id in res.stdout and len(v1.keys) == 5


def test_the_example_configs_load() -> None:
    from custos.agent.config import load_agent_config
    from custos.controlplane.config import load_config

    assert load_config(DEPLOY / "controlplane.example.toml").probe_listen == "0.0.0.0:8080"
    assert load_agent_config(DEPLOY / "agent.example.toml").name == "gpu-node-17"
