"""The bento and the OCI image: what the bento holds, then a real image built by container/build.py,
run with podman on 127.0.0.1, answering exactly as the same models do outside it.

The image tests need podman (CI installs it) and skip without it; they build the Debian base locally
with debootstrap when they can (no registry needed), else use BentoML's default base image.
A cold run (no base image, no layer cache) takes about 4 minutes on 2 cores; a warm one under a minute.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from container.build import ULIMITS, bento_image_name
from loadtests.server import free_port
from models.artifact import load_artifact
from service.inputs import Limits, history_window
from tests import tiny_models
from tests.service_client import served_answers

ROOT = Path(__file__).resolve().parent.parent
PODMAN = shutil.which("podman")


def bentoml(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "bentoml", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# ------------------------------------------------------------------------------------ the bento


def test_the_runtime_stage_keeps_the_bento_images_environment_but_the_flag_that_stops_worker_restarts_and_its_home(monkeypatch):
    from container import build

    config = {"Env": ["PATH=/app/.venv/bin:/usr/bin", "BENTOML_CONTAINERIZED=true", 'BENTO_PATH=/home/bentoml/bento',
                      "BENTOML_HOME=/home/bentoml/"],
              "WorkingDir": "/home/bentoml/bento"}
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, json.dumps(config), ""))
    tail = build.runtime_containerfile("podman", "seqserve-bento:cpu").split("(added by container/build.py")[1]
    assert 'PATH="/app/.venv/bin:/usr/bin"' in tail and 'BENTO_PATH="/home/bentoml/bento"' in tail
    assert "BENTOML_CONTAINERIZED=" not in tail and tail.endswith("WORKDIR /home/bentoml/bento\n")
    assert 'BENTOML_HOME="/tmp/bentoml"' in tail and "/home/bentoml/\"" not in tail


def test_a_wheel_folder_the_build_cannot_mount_is_refused():
    # Docker builds install torch from its index: the folder was dropped without a word, then an offline build failed.
    done = subprocess.run([sys.executable, str(ROOT / "container" / "build.py"), "--backend", "docker",
                           "--torch-wheels", "/nonexistent", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "--torch-wheels: only a CPU image built with podman mounts" in done.stderr
    # The environment's folder is a standing setting for CPU builds: a GPU build passes it by.
    done = subprocess.run([sys.executable, str(ROOT / "container" / "build.py"), "--variant", "gpu", "--backend", "podman",
                           "--dry-run"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "SEQSERVE_TORCH_WHEELS": "/tmp"})
    assert done.returncode == 0, done.stderr


def test_bentofile_pins_the_same_packages_as_pyproject():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # BentoML pins itself (bentoml==<the version that builds the bento>).
    assert sorted(bentofile["python"]["packages"]) == sorted(p for p in project if not p.startswith("bentoml"))


def test_bento_holds_service_code_and_models_and_carries_them_to_a_clean_store(tmp_path):
    clf, fc = tiny_models.store_classifier("bento-clf"), tiny_models.store_forecaster("bento-fc")
    out = bentoml("build", "--output", "tag", ".", env={"SEQSERVE_MODELS": f"{clf},{fc}"})
    bento = out.strip().splitlines()[-1].removeprefix("__tag__:")
    archive = tmp_path / "seqserve.bento"
    bentoml("export", bento, str(archive))

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    sources = {n.removeprefix("./").removeprefix("src/") for n in names if n.removeprefix("./").startswith("src/")}
    assert {"service/app.py", "service/config.py", "models/artifact.py"} <= sources
    assert not [n for n in sources if n.split("/")[0] in ("training", "tests", "loadtests", "container", "deploy")]
    for tag in (clf, fc):
        name, version = tag.split(":")
        assert any(n.removeprefix("./").startswith(f"models/{name}/{version}/") for n in names), f"{tag} not in the bento"

    # Another machine: a store that has never seen the models gets them with the bento.
    clean = {"BENTOML_HOME": str(tmp_path / "clean-store")}
    bentoml("import", str(archive), env=clean)
    listed = bentoml("models", "list", "-o", "json", env=clean)
    assert clf in listed and fc in listed


# ------------------------------------------------------------------------------------ the image

needs_podman = pytest.mark.skipif(PODMAN is None, reason="podman is not installed (CI installs it: see container/README.md)")


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def base_image() -> str:
    """Where the test builds from: SEQSERVE_BASE_IMAGE, else a local Debian base when debootstrap can make one."""
    if "SEQSERVE_BASE_IMAGE" in os.environ:
        return os.environ["SEQSERVE_BASE_IMAGE"]
    return "local" if shutil.which("debootstrap") and os.geteuid() == 0 else ""


@pytest.fixture(scope="module")
def image():
    tags = {"clf": tiny_models.store_classifier("image-clf"), "fc": tiny_models.store_forecaster("image-fc")}
    name = f"localhost/seqserve-test:{uuid.uuid4().hex[:8]}"
    dangling_before = dangling_images()
    start = time.monotonic()
    build = subprocess.run(
        [sys.executable, str(ROOT / "container" / "build.py"), "--base-image", base_image(), "--tag", name,
         "--models", f"{tags['clf']},{tags['fc']}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"built {name} in {time.monotonic() - start:.0f}s: {build.stdout.strip().splitlines()[-2]}")
    try:
        yield name, tags
    finally:
        podman("rmi", "--force", name, bento_image_name(name, "cpu"), check=False)
        # The build's stages stay behind untagged, about 2 GB a run: every `make test` on one machine added one.
        if left := dangling_images() - dangling_before:
            podman("rmi", "--force", *sorted(left), check=False)


def dangling_images() -> set[str]:
    """The ids of the untagged images there are now (a build's intermediate stages among them)."""
    return set(podman("images", "--quiet", "--filter", "dangling=true", check=False).stdout.split())


LOCKED_DOWN = ("--read-only", "--tmpfs", "/tmp", "--user", "1000650000:0")


@pytest.fixture()
def container(image):
    name, tags = image
    port, container_name = free_port(), f"seqserve-test-{uuid.uuid4().hex[:8]}"
    # As a locked-down pod runs it (deploy/): a read-only root with a writable /tmp, and a UID that is not the
    # image's, in group 0, as OpenShift assigns. BentoML's home at /home/bentoml/ killed both at start.
    podman("run", "--detach", "--name", container_name, "--network", "host",
           *[arg for limit in ULIMITS for arg in ("--ulimit", limit)], *LOCKED_DOWN,
           "--env", f"BENTOML_PORT={port}", "--env", f"SEQSERVE_MODELS={tags['clf']},{tags['fc']}", name)
    url = f"http://127.0.0.1:{port}"
    try:
        yield container_name, url, tags
    finally:
        podman("rm", "--force", container_name, check=False)


def wait_ready(url: str, container_name: str, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            # A container that exited will never be ready: say so now, not after the timeout.
            if podman("inspect", "--format", "{{.State.Running}}", container_name, check=False).stdout.strip() == "false":
                break
        time.sleep(0.2)
    logs = podman("logs", container_name, check=False)
    raise AssertionError(f"not ready after {time.monotonic() - start:.0f}s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


@needs_podman
@pytest.mark.timeout(1500)
def test_image_answers_like_the_models_outside_it_and_stops_on_sigterm(image, container):
    container_name, url, tags = container
    print(f"ready {wait_ready(url, container_name):.1f}s after podman run")

    image_id = podman("inspect", "--format", "{{.Image}}", container_name).stdout.strip()
    inspected = json.loads(podman("image", "inspect", image_id).stdout)[0]
    user = inspected["Config"]["User"]
    assert user.split(":")[0] not in ("", "0", "root")
    healthcheck = inspected.get("Healthcheck") or inspected["Config"]["Healthcheck"]  # podman puts it at the top
    assert healthcheck["Test"][-1].endswith("seqserve-healthcheck")
    assert podman("healthcheck", "run", container_name, check=False).returncode == 0
    check = ["python", "/usr/local/bin/seqserve-healthcheck"]  # PORT, where set, is where BentoML's entrypoint serves
    assert podman("exec", "--env", f"PORT={url.rsplit(':', 1)[1]}", container_name, *check, check=False).returncode == 0
    assert podman("exec", "--env", "PORT=9", container_name, *check, check=False).returncode == 1
    assert "BENTOML_DO_NOT_TRACK=true" in inspected["Config"]["Env"]  # no usage data posted from a user's pods
    site_cas = podman("exec", container_name, "sh", "-c", "ls /usr/local/share/ca-certificates", check=False).stdout
    assert not site_cas.strip(), f"the build machine's CAs were shipped: {site_cas}"
    assert podman("exec", container_name, "id", "-u").stdout.strip() != "0"
    # The runtime stage keeps the bento image's settings and leaves its compilers behind (issue 19: <= 1.2 GB).
    bento_config = json.loads(podman("image", "inspect", bento_image_name(image[0], "cpu")).stdout)[0]["Config"]
    changed = ("BENTOML_CONTAINERIZED", "BENTOML_HOME")  # build.LEFT_OUT_ENV and build.REPLACED_ENV
    kept = {v for v in bento_config["Env"] if v.split("=", 1)[0] not in changed}
    assert kept <= set(inspected["Config"]["Env"]) and not any(v.startswith("BENTOML_CONTAINERIZED=") for v in inspected["Config"]["Env"])
    assert "BENTOML_HOME=/tmp/bentoml" in inspected["Config"]["Env"]
    assert podman("exec", container_name, "id", "-u").stdout.strip() == LOCKED_DOWN[-1].split(":")[0]
    assert podman("exec", container_name, "sh", "-c", "command -v gcc || command -v cc", check=False).returncode != 0
    assert inspected["Size"] <= 1.2e9, f"image is {inspected['Size'] / 1e9:.2f} GB"

    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(int(n), 3)).astype(np.float32) for n in (1, 7, 30)]
    histories = [rng.normal(size=int(n)).astype(np.float32) * 3 + 10 for n in (12, 40)]
    padded = np.zeros((len(sequences), max(len(s) for s in sequences), 3), np.float32)
    for i, s in enumerate(sequences):
        padded[i, :len(s)] = s
    v2_request = {"inputs": [
        {"name": "sequence", "datatype": "FP32", "shape": list(padded.shape), "data": padded.ravel().tolist()},
        {"name": "lengths", "datatype": "INT64", "shape": [len(sequences)], "data": [len(s) for s in sequences]}]}
    with httpx.Client(base_url=url, timeout=30) as client:
        classified = client.post("/classify", json={"instances": [{"sequence": s.tolist()} for s in sequences]})
        forecast = client.post("/forecast", json={"instances": [{"history": h.tolist(), "model": tags["fc"]} for h in histories]})
        bad = client.post("/classify", json={"instances": [{"sequence": [[1.0, 2.0]]}]})
        v2_ready = client.get("/v2/health/ready")
        v2 = client.post(f"/v2/models/{tags['clf'].split(':')[0]}/infer", json=v2_request)
    assert classified.status_code == 200 and forecast.status_code == 200, classified.text + forecast.text
    assert bad.status_code == 400 and "instances[0].sequence" in bad.json()["error"]
    assert v2_ready.status_code == 200 and v2.status_code == 200, v2_ready.text + v2.text

    clf, fc = load_artifact(tags["clf"]), load_artifact(tags["fc"])
    for answer, expected in zip(classified.json(), served_answers(clf, sequences), strict=True):
        assert answer["model"] == tags["clf"] and answer["label"] == expected["label"]
        np.testing.assert_allclose([answer["probabilities"][k] for k in expected["probabilities"]],
                                   list(expected["probabilities"].values()), atol=1e-5)
    v2_outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert v2_outputs["label"]["data"] == [answer["label"] for answer in classified.json()]
    np.testing.assert_allclose(np.reshape(v2_outputs["probabilities"]["data"], v2_outputs["probabilities"]["shape"]),
                               [list(answer["probabilities"].values()) for answer in classified.json()], atol=1e-5)
    windows = [history_window(i, h.tolist(), fc, Limits()) for i, h in enumerate(histories)]
    for answer, expected in zip(forecast.json(), served_answers(fc, windows), strict=True):
        assert answer["model"] == tags["fc"]
        np.testing.assert_allclose(answer["forecast"], expected["forecast"], rtol=1e-5, atol=1e-4)
        for q, values in expected["quantiles"].items():
            np.testing.assert_allclose(answer["quantiles"][q], values, rtol=1e-5, atol=1e-4)

    start = time.monotonic()
    podman("stop", "--time", "20", container_name)
    stopped = time.monotonic() - start
    state = json.loads(podman("inspect", container_name).stdout)[0]["State"]
    assert state["ExitCode"] == 0 and stopped < 5, f"exit code {state['ExitCode']} after {stopped:.1f}s"
    logs = podman("logs", container_name)
    assert "Service seqserve initialized" in logs.stdout + logs.stderr  # the server logs to the container's output


def store_outside(store: Path, code: str) -> str:
    """Run ``code`` (tests.tiny_models calls, through models.artifact as seqserve-train stores) in a process whose
    BentoML store is ``store``, as an operator writing to a mounted store from outside; return what it prints."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BENTOML_HOME": str(store)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def defaults(url: str) -> dict[str, str]:
    """Name -> the version that answers requests naming it (GET /models)."""
    return {m["tag"].split(":")[0]: m["tag"] for m in httpx.get(f"{url}/models", timeout=5).json() if m["name_default"]}


def wait_default(url: str, tag: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if defaults(url).get(tag.split(":")[0]) == tag:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{tag} does not serve its name {timeout:.0f}s after it was stored: {defaults(url)}")


WORKER_PIDS = ("import psutil; (main,) = [p for p in psutil.process_iter(['cmdline']) if 'serve' in (p.info['cmdline'] or [])]; "
               "print(*sorted(c.pid for c in main.children()))")


@needs_podman
@pytest.mark.timeout(600)
def test_a_worker_killed_in_the_container_is_replaced_and_the_server_answers_on(image):
    # BentoML's image starts no replacement (BENTOML_CONTAINERIZED): a pod of two served with one for good.
    name, tags = image
    port, container_name = free_port(), f"seqserve-test-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", "--name", container_name, "--network", "host",
           *[arg for limit in ULIMITS for arg in ("--ulimit", limit)], "--env", f"BENTOML_PORT={port}",
           "--env", "SEQSERVE_WORKERS=2", "--env", f"SEQSERVE_MODELS={tags['clf']}", name)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, container_name)
        before = podman("exec", container_name, "/app/.venv/bin/python", "-c", WORKER_PIDS).stdout.split()
        assert len(before) == 2, before
        podman("exec", container_name, "sh", "-c", f"kill -9 {before[0]}")
        deadline = time.monotonic() + 60
        while True:
            now = podman("exec", container_name, "/app/.venv/bin/python", "-c", WORKER_PIDS, check=False).stdout.split()
            if len(now) == 2 and before[0] not in now:
                break
            assert time.monotonic() < deadline, f"workers {now} (killed {before[0]})"
            time.sleep(1)
        body = {"instances": [{"sequence": [[0.1, 0.2, 0.3]] * 5}]}
        for _ in range(20):  # the server answers on, with its two workers again
            assert httpx.post(f"{url}/classify", json=body, headers={"connection": "close"}).status_code == 200
        assert "died; circus will start another" in podman("logs", container_name).stderr + podman("logs", container_name).stdout
    finally:
        podman("rm", "--force", container_name, check=False)


@needs_podman
@pytest.mark.timeout(1500)
def test_a_mounted_store_serves_new_versions_written_from_outside(image, tmp_path):
    name, tags = image
    clf_name = tags["clf"].split(":")[0]
    # The store an operator makes once: the image's bundled versions copied out (README, "New model versions, live").
    store = tmp_path / "store"
    store.mkdir()
    created = podman("create", name).stdout.strip()
    podman("cp", f"{created}:/home/bentoml/bento/models", str(store / "models"))
    podman("rm", created)

    port, container_name = free_port(), f"seqserve-test-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", "--name", container_name, "--network", "host",
           *[arg for limit in ULIMITS for arg in ("--ulimit", limit)],
           "--volume", f"{store / 'models'}:/home/bentoml/bento/models:ro",
           "--env", f"BENTOML_PORT={port}", "--env", "SEQSERVE_MODEL_POLL_S=1",
           "--env", f"SEQSERVE_MODELS={clf_name},{tags['fc'].split(':')[0]}", name)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, container_name)
        assert defaults(url) == {clf_name: tags["clf"], tags["fc"].split(":")[0]: tags["fc"]}

        # Requests keep coming while the new version is stored and loaded: every one is answered.
        answered: list[tuple[int, str]] = []
        stop = threading.Event()

        def send() -> None:
            sequence = [[0.1, -0.2, 0.3]] * 7
            with httpx.Client(base_url=url, timeout=10) as client:
                while not stop.is_set():
                    reply = client.post("/classify", json={"instances": [{"sequence": sequence}]})
                    model = reply.json()[0]["model"] if reply.status_code == 200 else reply.text
                    answered.append((reply.status_code, model))

        sender = threading.Thread(target=send)
        sender.start()
        try:
            second = store_outside(store, f"from tests import tiny_models; print(tiny_models.store_classifier({clf_name!r}, seed=1))")
            took = wait_default(url, second, timeout=60)
            time.sleep(0.5)
        finally:
            stop.set()
            sender.join(timeout=30)
        print(f"{second} served {took:.1f}s after it was stored (poll 1 s)")
        assert answered and all(status == 200 for status, _ in answered), [a for a in answered if a[0] != 200][:3]
        assert {model for _, model in answered} == {tags["clf"], second} and answered[-1][1] == second

        # The old version still answers when named (two versions of a name stay loaded).
        old = httpx.post(f"{url}/classify", json={"instances": [{"sequence": [[0.1, -0.2, 0.3]], "model": tags["clf"]}]})
        assert old.status_code == 200 and old.json()[0]["model"] == tags["clf"]

        # A version half-copied into the store (no model.yaml yet) is not served; once complete, it is.
        staging = tmp_path / "staging"
        third = store_outside(staging, f"from tests import tiny_models; print(tiny_models.store_classifier({clf_name!r}, seed=2))")
        source, target = staging / "models" / clf_name / third.split(":")[1], store / "models" / clf_name / third.split(":")[1]
        target.mkdir()
        for part in source.iterdir():
            if part.name != "model.yaml":
                shutil.copy2(part, target)
        time.sleep(3)  # three looks
        assert defaults(url)[clf_name] == second
        shutil.copy2(source / "model.yaml", target)
        took = wait_default(url, third, timeout=60)
        print(f"{third} served {took:.1f}s after its copy completed")
        gone = httpx.post(f"{url}/classify", json={"instances": [{"sequence": [[0.1, -0.2, 0.3]], "model": tags["clf"]}]})
        assert gone.status_code == 410 and third in gone.json()["error"], gone.text
    finally:
        podman("rm", "--force", container_name, check=False)
