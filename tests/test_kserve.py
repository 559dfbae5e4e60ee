"""The KServe manifests in deploy/kserve, read with the kserve SDK's own model classes.

Every field of every document is matched to an attribute of the SDK's class for it (kserve's own
``V1beta1InferenceService``, ``V1alpha1ServingRuntime`` and the Kubernetes client's ``V1Container``,
``V1Probe``, ...), built with that class (which refuses a missing required field), and written back
with the SDK's serialiser: the result must equal the document (less the defaults the SDK adds), so a misspelt or
misplaced field fails here, not on a cluster. Then the probes must hit routes the service serves.

The SDK is installed without its dependencies (Makefile, ``setup``): its model classes need only
``six`` and the Kubernetes client, but ``import kserve`` starts from its model server (FastAPI, gRPC,
pandas<3, ...). So :func:`kserve_models` imports the ``kserve.models`` package without running
``kserve/__init__.py``.
"""

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from tests.test_deploy import served_get_paths

ROOT = Path(__file__).resolve().parent.parent
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": float}


def kserve_models():
    """``kserve.models`` without ``kserve/__init__.py`` (which imports the SDK's model server)."""
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        assert spec is not None, "the kserve SDK is not installed: run `make setup`"
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    import kserve.models

    return kserve.models


def build(value, type_name: str, where: str):
    """``value`` (from YAML) as the SDK type ``type_name``; fails naming ``where`` for an unknown field."""
    import kubernetes.client.models as k8s

    # kserve writes list[X] and dict(str, X); the Kubernetes client List[X] and Dict[str, X].
    if listed := re.fullmatch(r"[lL]ist\[(.*)\]", type_name):
        assert isinstance(value, list), f"{where}: expected a list"
        return [build(item, listed.group(1), f"{where}[{i}]") for i, item in enumerate(value)]
    if mapped := re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", type_name):
        assert isinstance(value, dict), f"{where}: expected an object"
        inner = mapped.group(1) or mapped.group(2)
        return {key: build(item, inner, f"{where}.{key}") for key, item in value.items()}
    if type_name == "object":
        return value
    if type_name in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[type_name]), f"{where}: expected {type_name}, got {value!r}"
        return value
    cls = getattr(kserve_models(), type_name, None) or getattr(k8s, type_name)
    assert isinstance(value, dict), f"{where}: expected an object ({type_name})"
    attribute = {key: attr for attr, key in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(attribute))
    assert not unknown, f"{where}: {unknown} are not fields of {type_name}; it has {sorted(attribute)}"
    return cls(**{attribute[key]: build(item, cls.openapi_types[attribute[key]], f"{where}.{key}") for key, item in value.items()})


KINDS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    docs = [d for f in sorted((ROOT / "deploy" / "kserve").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "ServingRuntime"]
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_is_one_the_kserve_sdk_knows(documents, kind):
    kserve_models()
    from kserve.api_client import ApiClient

    document = documents[kind]
    built = build(document, KINDS[kind], kind)
    assert type(built).__module__.startswith("kserve.models.")
    written = ApiClient().sanitize_for_serialization(built)
    assert without_defaults(written, document) == document


def without_defaults(written, document):
    """``written`` less the fields the SDK fills in by itself (``name: ""`` on a model spec) that ``document`` lacks."""
    if isinstance(written, dict) and isinstance(document, dict):
        return {k: without_defaults(v, document[k]) for k, v in written.items() if k in document or v not in ("", None)}
    if isinstance(written, list) and isinstance(document, list) and len(written) == len(document):
        return [without_defaults(w, d) for w, d in zip(written, document)]
    return written


def test_the_inference_service_asks_the_seqserve_runtime_for_v2(documents):
    runtime, service = documents["ServingRuntime"], documents["InferenceService"]
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}


def test_probes_hit_the_v2_health_routes_on_the_port_the_server_listens_on(documents):
    (container,) = documents["ServingRuntime"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (port,) = container["ports"]
    assert int(env["BENTOML_PORT"]) == port["containerPort"]
    paths = served_get_paths()
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert (probes["livenessProbe"]["path"], probes["readinessProbe"]["path"]) == ("/v2/health/live", "/v2/health/ready")
    for kind, probe in probes.items():
        assert probe["path"] in paths and probe["port"] == port["containerPort"], kind
    known = set(re.findall(r'"(SEQSERVE_\w+)"', (ROOT / "service" / "config.py").read_text()))
    assert {name for name in env if name.startswith("SEQSERVE_")} <= known
