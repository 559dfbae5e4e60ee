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
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"], kinds
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


def test_a_drain_evicts_one_pod_at_a_time_and_never_the_last(manifests):
    budget, hpa = manifests["PodDisruptionBudget"]["spec"], manifests["HorizontalPodAutoscaler"]["spec"]
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["maxUnavailable"] == 1 < hpa["minReplicas"]


def test_pods_run_as_any_non_root_user(manifests):
    # The image's USER is numeric, so runAsNonRoot can check it without a passwd lookup; no runAsUser, so
    # OpenShift's restricted policy may assign its own UID (in group 0), under which the image serves too.
    user = re.search(r"^USER (\d+)", (ROOT / "container" / "Containerfile").read_text(), re.M).group(1)
    assert user != "0"
    for pod, container in every_container():
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context["runAsNonRoot"] and "runAsUser" not in context, container["name"]


def test_the_root_filesystem_is_read_only_and_bentoml_writes_to_the_volume_at_tmp():
    from container.build import REPLACED_ENV

    assert REPLACED_ENV["BENTOML_HOME"].startswith("/tmp/")
    for pod, container in every_container():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume, container["name"]


def every_container() -> list[tuple[dict, dict]]:
    """(pod spec, container) of the Deployment and of the KServe runtime (whose spec is its pod's: volumes)."""
    found = []
    for path in ("k8s/deployment.yaml", "kserve/inferenceservice.yaml"):
        for doc in yaml.safe_load_all((ROOT / "deploy" / path).read_text()):
            if doc and doc["kind"] == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                found += [(pod, c) for c in pod["containers"]]
            elif doc and doc["kind"] == "ServingRuntime":
                found += [(doc["spec"], c) for c in doc["spec"]["containers"]]
    assert len(found) == 2
    return found


def test_pods_meet_the_restricted_pod_security_standard():
    for pod, container in every_container():
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context["runAsNonRoot"] and context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}


# A worker's models, torch, parsing at the default body cap and oneDNN's caches at their worst (README "Memory":
# ~290 MB idle, ~590 MB after a minute of random shapes up to 64 x 4,096 steps).
MIB_PER_WORKER = 600


def test_hostile_streams_cannot_take_a_pod_past_its_memory_limit():
    # A WebSocket stream can hold 2 x the body cap of half-sent messages; at the default 1,000 open streams a
    # worker, two workers could hold ~4 GiB against a 2 GiB limit (one client, 300 streams: +340 MB).
    from service.config import Settings

    defaults = Settings.from_env()
    for _, container in every_container():
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        workers = int(env["SEQSERVE_WORKERS"])
        streams = int(env.get("SEQSERVE_STREAM_MAX_OPEN", defaults.stream_max_open))
        body_mib = float(env.get("SEQSERVE_MAX_BODY_MB", defaults.max_body_bytes / 2**20))
        limit = container["resources"]["limits"]["memory"]
        assert limit.endswith("Gi")
        assert workers * (streams * 2 * body_mib + MIB_PER_WORKER) <= int(limit[:-2]) * 1024, container["name"]


def test_the_autoscaler_alone_sets_the_replicas(manifests):
    assert "replicas" not in manifests["Deployment"]["spec"]  # an apply would reset the autoscaler's count


def test_secrets_come_from_an_optional_secret_so_the_manifests_apply_without_one():
    for _, container in every_container():
        from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert set(from_secrets) == {"SEQSERVE_API_KEYS", "SEQSERVE_STATE_KEY"}, container["name"]
        assert all(ref["optional"] is True and ref["name"] == "seqserve" for ref in from_secrets.values())
