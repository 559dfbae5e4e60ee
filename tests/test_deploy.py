"""The Kubernetes manifests in deploy/k8s: probes hit endpoints the service really serves, ports line up,
the settings are ones the service reads, and the autoscaler targets the Deployment."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service"], kinds
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def container(manifests) -> dict:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def served_get_paths() -> set[str]:
    """GET paths of the ASGI app `bentoml serve` runs for SeqServe (BentoML's probes, /metrics, /models, ...)."""
    from service.app import SeqServe

    def walk(routes, prefix=""):
        for route in routes:
            if "GET" in (getattr(route, "methods", None) or ()):
                yield prefix + route.path
            yield from walk(getattr(route, "routes", None) or (), prefix + getattr(route, "path", ""))

    return set(walk(SeqServe.to_asgi().routes))


def port_number(container: dict, port) -> int:
    """A probe's or Service's port (a number or a port name) as the container port it reaches."""
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return named[port] if isinstance(port, str) else port


def test_probes_hit_the_services_own_health_endpoints(container):
    paths = served_get_paths()
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe") if kind in container}
    assert probes["livenessProbe"]["path"] == "/livez" and probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["path"] in paths, f"{kind} {probe['path']} is not served; served GET paths: {sorted(paths)}"


def test_ports_line_up_from_service_to_server(manifests, container):
    env = {e["name"]: e.get("value") for e in container["env"]}
    (port,) = container["ports"]
    assert int(env["BENTOML_PORT"]) == port["containerPort"]  # the server listens where the pod exposes
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert port_number(container, container[kind]["httpGet"]["port"]) == port["containerPort"], kind
    for service_port in manifests["Service"]["spec"]["ports"]:
        assert port_number(container, service_port["targetPort"]) == port["containerPort"]
    # ... and the image's own default agrees, so the manifest works without BENTOML_PORT too.
    containerfile = (ROOT / "container" / "Containerfile").read_text()
    assert re.search(r"BENTOML_PORT=(\d+)", containerfile).group(1) == str(port["containerPort"])
    assert re.search(r"^EXPOSE (\d+)", containerfile, re.M).group(1) == str(port["containerPort"])


def test_settings_are_ones_the_service_reads(container):
    known = set(re.findall(r'"(SEQSERVE_\w+)"', (ROOT / "service" / "config.py").read_text()))
    used = {e["name"] for e in container["env"] if e["name"].startswith("SEQSERVE_")}
    assert used and used <= known, f"unknown settings: {sorted(used - known)}"


def test_service_and_autoscaler_target_the_deployment(manifests, container):
    deployment, service, hpa = manifests["Deployment"], manifests["Service"], manifests["HorizontalPodAutoscaler"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A CPU utilisation target is a share of the request: without one the autoscaler cannot act.
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} <= set(container["resources"]["requests"])


def test_pod_runs_as_the_images_non_root_user(manifests):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+)", (ROOT / "container" / "Containerfile").read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsNonRoot"] and str(pod["securityContext"]["runAsUser"]) == user != "0"
