"""deploy/: the Kubernetes manifests, the nginx and Envoy configurations agree.

The manifests are checked against the Kubernetes API's own schemas
(kubernetes-validate, strict: no unknown field), the Envoy bootstrap against
Envoy's own API (xds-protos: every field name, type, enum value and typed
config), and all of them against each other and against the daemon's real
command line: the names the proxies hash on are the StatefulSet's pod names,
ports and paths match, the daemon's arguments parse.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from buildd_client.routing import SESSION_HEADER
from buildd_server.daemon.cli import config_from_args

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
NGINX = ROOT / "deploy" / "nginx" / "nginx.conf"
ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
# The oldest Kubernetes the manifests are for (gRPC probes, keepalive sysctls).
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def _resources() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(KUBE.glob("**/*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((path, document))
    return found


def _one(kind: str, name: str) -> dict[str, Any]:
    [resource] = [r for _, r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return resource


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(version: str) -> None:
    resources = _resources()
    assert {r["kind"] for _, r in resources} >= {
        "Namespace",
        "Secret",
        "Service",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
        "ConfigMap",
        "NetworkPolicy",
    }
    for path, resource in resources:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name}: {resource['kind']}: {exc}") from exc
        assert resource["metadata"].get("namespace", "buildd") == "buildd"


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    statefulset = _one("StatefulSet", "buildd")
    statefulset["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, VERSIONS[-1], strict=True)


def test_the_proxy_configmap_is_the_reference_nginx_conf() -> None:
    config = _one("ConfigMap", "buildd-proxy")
    assert config["data"]["nginx.conf"] == NGINX.read_text()
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_deploy.py"), "--check"])
    assert check.returncode == 0


def _daemon_names() -> list[str]:
    """HOST:PORT of every daemon pod, as the headless Service names them."""
    statefulset, service = _one("StatefulSet", "buildd"), _one("Service", "buildd")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    [port] = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    namespace = statefulset["metadata"]["namespace"]
    return [
        f"{statefulset['metadata']['name']}-{i}.{service['metadata']['name']}.{namespace}"
        f".svc.cluster.local:{port}"
        for i in range(statefulset["spec"]["replicas"])
    ]


def test_the_daemons_command_line_is_the_real_one() -> None:
    spec = _one("StatefulSet", "buildd")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["command"] == ["buildd-server"]
    args = [a.replace("$(POD_NAME)", "buildd-0") for a in container["args"]]
    config = config_from_args(args)
    assert config.daemon_id == "buildd-0"
    assert any(e["name"] == "POD_NAME" for e in container["env"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.address == f"0.0.0.0:{ports['grpc']}"
    assert config.metrics_address == f"0.0.0.0:{ports['metrics']}"
    assert container["readinessProbe"]["grpc"] == {
        "port": ports["grpc"],
        "service": "buildd.v1.Buildd",
    }
    assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    # The token file is the one the init container made private, on a mounted volume.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert config.token_file is not None and str(config.token_file.parent) in mounts
    [init] = spec["initContainers"]
    assert str(config.token_file) in init["command"][-1]
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = volumes[next(m["name"] for m in init["volumeMounts"] if "secret" in m["name"])]
    assert secret["secret"]["secretName"] == "buildd-tokens"
    assert "tokens" in _one("Secret", "buildd-tokens")["stringData"]
    # State on the per-replica volume; drains fit in the termination grace.
    assert mounts[str(config.state_dir)] == "state"
    [claim] = _one("StatefulSet", "buildd")["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert spec["terminationGracePeriodSeconds"] > config.grace + 10


def test_selectors_match_their_pods() -> None:
    for kind, name in (("StatefulSet", "buildd"), ("Deployment", "buildd-proxy")):
        resource = _one(kind, name)
        labels = resource["spec"]["template"]["metadata"]["labels"]
        assert resource["spec"]["selector"]["matchLabels"].items() <= labels.items()
    daemons = _one("StatefulSet", "buildd")["spec"]["template"]["metadata"]["labels"]
    proxies = _one("Deployment", "buildd-proxy")["spec"]["template"]["metadata"]["labels"]
    for service, pods in (("buildd", daemons), ("buildd-proxy", proxies)):
        assert _one("Service", service)["spec"]["selector"].items() <= pods.items()
    for budget, pods in (("buildd", daemons), ("buildd-proxy", proxies)):
        selector = _one("PodDisruptionBudget", budget)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods.items()
    policy = _one("NetworkPolicy", "buildd-daemons")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= daemons.items()
    [grpc_rule] = [r for r in policy["ingress"] if r["ports"][0]["port"] == 50051]
    assert grpc_rule["from"][0]["podSelector"]["matchLabels"].items() <= proxies.items()


def test_nginx_hashes_the_header_over_every_daemon_by_name() -> None:
    text = NGINX.read_text()
    assert f"hash $http_{SESSION_HEADER.replace('-', '_')} consistent;" in text
    block = re.search(r"# daemons: begin\n(.*?)        # daemons: end", text, re.S)
    assert block is not None
    servers = re.findall(r"^\s*server (\S+) resolve max_fails=1 fail_timeout=5s;$", block[1], re.M)
    assert servers == _daemon_names()
    proxy = _one("Deployment", "buildd-proxy")["spec"]["template"]["spec"]
    [container] = proxy["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"listen {ports['grpcs']} ssl http2;" in text
    assert f"listen {ports['health']} http2;" in text
    assert container["readinessProbe"]["grpc"]["port"] == ports["health"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/etc/nginx/tls" in mounts and "/etc/nginx/nginx.conf" in mounts
    for path in re.findall(r"ssl_certificate(?:_key)? (\S+);", text):
        assert path.startswith("/etc/nginx/tls/")
    # The Service publishes only the TLS port.
    service_ports = _one("Service", "buildd-proxy")["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["grpcs"]


def _envoy() -> Any:
    for module in (
        "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "envoy.extensions.filters.http.router.v3.router_pb2",
        "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
        "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
    ):
        importlib.import_module(module)  # registers the typed configs' types
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from google.protobuf import json_format

    return json_format.ParseDict(yaml.safe_load(ENVOY.read_text()), bootstrap_pb2.Bootstrap())


def test_envoy_parses_against_envoys_api_and_routes_like_nginx() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm,
    )

    bootstrap = _envoy()
    [cluster] = bootstrap.static_resources.clusters
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert cluster.common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing
    [health] = cluster.health_checks
    assert health.grpc_health_check.service_name == "buildd.v1.Buildd"
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )
    endpoints = [
        f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}"
        for group in cluster.load_assignment.endpoints
        for e in group.lb_endpoints
    ]
    assert endpoints == _daemon_names()
    [listener] = bootstrap.static_resources.listeners
    [chain] = listener.filter_chains
    manager = hcm.HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(manager)
    [route] = manager.route_config.virtual_hosts[0].routes
    assert [h.header.header_name for h in route.route.hash_policy] == [SESSION_HEADER]
    assert route.route.cluster == cluster.name
    retried = set(route.route.retry_policy.retry_on.split(","))
    assert retried == {"connect-failure", "refused-stream"}


def test_the_envoy_check_refuses_a_misspelt_field(tmp_path: Path) -> None:
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from google.protobuf import json_format

    _envoy()
    data = yaml.safe_load(ENVOY.read_text().replace("lb_policy:", "lb_polcy:"))
    with pytest.raises(json_format.ParseError, match="lb_polcy"):
        json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def test_the_dockerfile_runs_what_the_statefulset_runs() -> None:
    # The image's entry point is the same buildd-server, on the same port.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 50051" in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    spec = _one("StatefulSet", "buildd")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 10001
    assert shlex.split(spec["initContainers"][0]["command"][-1])[0] == "install"
