"""Build the seqserve bento and an OCI image of it: ``make image`` (CPU) or ``make image VARIANT=gpu``.

Steps, each printed with its time:

1. the base image, when ``--base-image local``: Debian bookworm made by ``container/base-image.sh``
   (no registry needed), reused when it already exists;
2. ``bentoml build`` with ``bentofile.yaml`` plus this machine's settings (base image, where torch
   comes from), written to ``build/bentofile.<variant>.yaml``; the bento holds the service code and
   the models it serves;
3. ``bentoml containerize`` of that bento, kept as ``<name>-bento:<variant>``: its layers are the
   cache that makes the next build take seconds;
4. ``container/Containerfile``: the bento image's virtual environment and bento copied onto a clean copy
   of its base image (leaving behind the compilers BentoML's template installs), with the bento image's
   environment, a health check on /readyz, tini as PID 1 and a numeric non-root user.

Where torch comes from: the CPU variant installs the ``torch==X+cpu`` wheel from a local wheel folder
(``--torch-wheels``; default: pip's find-links, when one holds that wheel), mounted read-only into the
image build, else from the PyTorch CPU index. The GPU variant installs torch from PyPI, whose Linux
wheels bundle the CUDA runtime, and asks BentoML for one GPU per service.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "localhost/seqserve-base:bookworm"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WHEELS_MOUNT = "/wheels"  # where the local wheel folder is mounted during the image build
# The runtime refuses to raise limits above this machine's hard limits; these fit a 2-core CI box.
ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=("cpu", "gpu"), default=env("SEQSERVE_VARIANT", "cpu"),
                   help="cpu: CPU-only torch; gpu: CUDA torch from PyPI and one GPU per service (env SEQSERVE_VARIANT)")
    p.add_argument("--base-image", default=env("SEQSERVE_BASE_IMAGE", ""),
                   help="image to build on; empty: BentoML's default (python:3.11-slim from a registry); "
                        f"'local': {LOCAL_BASE}, made here with debootstrap (env SEQSERVE_BASE_IMAGE)")
    p.add_argument("--tag", default=env("SEQSERVE_IMAGE", ""),
                   help="image name:tag to produce (env SEQSERVE_IMAGE; default seqserve:<variant>)")
    p.add_argument("--backend", default=env("SEQSERVE_CONTAINER_ENGINE", "podman" if shutil.which("podman") else "docker"),
                   choices=("podman", "docker"), help="container engine (env SEQSERVE_CONTAINER_ENGINE)")
    p.add_argument("--torch-wheels", default=None,
                   help="folder holding the torch CPU wheel, for the cpu variant; default: pip's find-links "
                        "when one holds it, else the PyTorch CPU index (env SEQSERVE_TORCH_WHEELS)")
    p.add_argument("--models", default=None,
                   help="comma-separated model names or tags to bundle (default: SEQSERVE_MODELS, else the newest "
                        "version of every seqserve model in the store)")
    p.add_argument("--dry-run", action="store_true", help="print the bentofile and the commands, run nothing")
    args = p.parse_args(argv)
    args.tag = args.tag or f"seqserve:{args.variant}"
    return args


def torch_pin(bentofile: dict) -> str:
    """The torch version pinned in the bentofile, e.g. ``2.13.0``."""
    for package in bentofile["python"]["packages"]:
        if match := re.fullmatch(r"torch==([\w.]+)", package.strip()):
            return match.group(1)
    raise SystemExit("bentofile.yaml: python.packages must pin torch (torch==X.Y.Z)")


def pip_find_links() -> list[str]:
    """Local folders pip is configured to find wheels in (PIP_FIND_LINKS and pip.conf)."""
    found = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in config.splitlines():
        if ".find-links=" in line:
            found += line.split("=", 1)[1].strip("'\"").split()
    return [f.removeprefix("file://") for f in dict.fromkeys(found) if os.path.isdir(f.removeprefix("file://"))]


def torch_cpu_wheels(version: str, folder: str) -> str | None:
    """``folder``, or the first of pip's find-links, that holds the torch ``version``+cpu wheel for this Python."""
    pattern = f"torch-{version}+cpu-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"
    for candidate in [folder] if folder else pip_find_links():
        if glob.glob(os.path.join(candidate, pattern)):
            return os.path.abspath(candidate)
    if folder:
        raise SystemExit(f"--torch-wheels {folder}: no {pattern} there")
    return None


def render_bentofile(bentofile: dict, args: argparse.Namespace, wheels: str | None) -> dict:
    """bentofile.yaml plus this build's settings."""
    base = LOCAL_BASE if args.base_image == "local" else args.base_image
    if base:
        bentofile.setdefault("docker", {})["base_image"] = base
    python = bentofile["python"]
    if args.variant == "cpu" and wheels:
        python["find_links"] = [WHEELS_MOUNT]  # uv prefers torch==X+cpu found there over PyPI's CUDA build
    elif args.variant == "cpu":
        python["extra_index_url"] = [TORCH_CPU_INDEX]
    else:
        # BentoML gives each service's workers this many GPUs through CUDA_VISIBLE_DEVICES.
        bentofile.setdefault("envs", []).append({"name": "BENTOML_CONFIG_OPTIONS", "value": "services.seqserve.resources.gpu=1"})
    return bentofile


def bento_image_name(tag: str, variant: str) -> str:
    """The image `bentoml containerize` makes, under a fixed name: its layers cache the next build."""
    return f"{tag.rsplit(':', 1)[0]}-bento:{variant}"


def bento_base_image(bento: str) -> str:
    """The base image `bentoml containerize` built ``bento`` on (BentoML's default when the bentofile names none)."""
    info = subprocess.run([sys.executable, "-m", "bentoml", "get", bento, "-o", "json"],
                          check=True, capture_output=True, text=True).stdout
    return json.loads(info)["image"]["base_image"]


# BentoML's image marks itself BENTOML_CONTAINERIZED, whose one effect (bentoml.serving.create_watcher) is that
# circus starts no replacement for a worker that dies: a pod of two then served with one for good, its probes
# answered by the one left. Without it a dead worker is replaced in a few seconds, in the image as outside.
LEFT_OUT_ENV = ("BENTOML_CONTAINERIZED",)
# BentoML makes its home's folders (bentos, models, envs, tmp) at every start, and the bento image's home,
# /home/bentoml/, is its user's alone: under the arbitrary UID OpenShift gives a pod (group 0), or a read-only
# root filesystem, the server died there before loading a model. /tmp is writable for any UID and is where a
# read-only pod mounts its one writable volume (deploy/). The bento (code and models) stays at BENTO_PATH.
REPLACED_ENV = {"BENTOML_HOME": "/tmp/bentoml"}


def env_instruction(variables: list[str]) -> str:
    """One ENV instruction setting ``NAME=value`` items exactly, whatever their values hold."""
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
    return "ENV " + " \\\n    ".join(f"{name}={quoted(value)}" for name, value in (v.split("=", 1) for v in variables))


def runtime_containerfile(backend: str, bento_image: str) -> str:
    """container/Containerfile with the bento image's environment and working directory at its end: the
    runtime stage starts from the bare base image, and BentoML's settings (BENTO_PATH, the virtual
    environment on PATH, the service's envs) live in that image's configuration, less ``LEFT_OUT_ENV`` and with
    ``REPLACED_ENV``."""
    config = json.loads(subprocess.run([backend, "image", "inspect", "--format", "{{json .Config}}", bento_image],
                                       check=True, capture_output=True, text=True).stdout)
    env = dict(v.split("=", 1) for v in config["Env"])
    env = {**{name: value for name, value in env.items() if name not in LEFT_OUT_ENV}, **REPLACED_ENV}
    replaced = ", ".join(f"{name} {value}" for name, value in REPLACED_ENV.items())
    return ((ROOT / "container" / "Containerfile").read_text()
            + f"\n# The environment and working directory of {bento_image} (added by container/build.py; "
            + f"without {', '.join(LEFT_OUT_ENV)}; {replaced}).\n"
            + env_instruction([f"{name}={value}" for name, value in env.items()]) + f"\nWORKDIR {config['WorkingDir']}\n")


def run(cmd: list[str], dry_run: bool, **kwargs) -> subprocess.CompletedProcess | None:
    print("+", shlex.join(cmd), flush=True)
    return None if dry_run else subprocess.run(cmd, check=True, **kwargs)


@contextlib.contextmanager
def step(name: str, timings: dict[str, float]):
    """Announce a step and record how long it took."""
    print(f"== {name}", flush=True)
    start = time.monotonic()
    yield
    timings[name] = time.monotonic() - start


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    timings: dict[str, float] = {}
    engine_net = ["--network", "host"]  # bridge networking needs iptables and leaves chains behind
    bentoml = [sys.executable, "-m", "bentoml"]

    if args.base_image == "local":
        with step("base image", timings):
            exists = subprocess.run(
                [args.backend, "image", "exists", LOCAL_BASE] if args.backend == "podman"
                else [args.backend, "image", "inspect", LOCAL_BASE], capture_output=True).returncode == 0
            if not exists:
                run([str(ROOT / "container" / "base-image.sh"), LOCAL_BASE], args.dry_run,
                    env={**os.environ, "SEQSERVE_CONTAINER_ENGINE": args.backend})

    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    # Only podman mounts a folder into a build; Docker builds take the CPU wheel from the PyTorch index.
    local_wheels = args.variant == "cpu" and args.backend == "podman"
    if args.torch_wheels and not local_wheels:
        raise SystemExit(f"--torch-wheels: only a CPU image built with podman mounts a wheel folder (this build: "
                         f"--variant {args.variant}, --backend {args.backend}, which installs torch from its index)")
    # The environment's folder is a standing setting for CPU builds: other builds pass it by.
    folder = args.torch_wheels or os.environ.get("SEQSERVE_TORCH_WHEELS", "")
    wheels = torch_cpu_wheels(torch_pin(bentofile), folder) if local_wheels else None
    rendered = render_bentofile(bentofile, args, wheels)
    out = ROOT / "build" / f"bentofile.{args.variant}.yaml"
    text = "# Generated by container/build.py from bentofile.yaml; do not edit.\n" + yaml.safe_dump(rendered, sort_keys=False)
    if args.dry_run:
        print(f"--- {out.relative_to(ROOT)}\n{text}---")
    else:
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)

    with step("bento", timings):
        env = dict(os.environ)
        if args.models is not None:
            env["SEQSERVE_MODELS"] = args.models
        done = run([*bentoml, "build", "-f", str(out), "--output", "tag", str(ROOT)], args.dry_run,
                   cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        bento = "seqserve:<new>" if done is None else done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
        print(f"built bento {bento}")

    bento_image = bento_image_name(args.tag, args.variant)
    with step("bento image", timings):
        opts = ["--opt", "network=host"]
        if args.backend == "podman":
            opts += [arg for limit in ULIMITS for arg in ("--opt", f"ulimit={limit}")]
        if wheels:
            opts += ["--opt", f"volume={wheels}:{WHEELS_MOUNT}:ro"]
        run([*bentoml, "containerize", bento, "--backend", args.backend, "--image-tag", bento_image, *opts], args.dry_run, cwd=ROOT)

    with step("image", timings):
        containerfile = ROOT / "build" / f"Containerfile.{args.variant}"
        base = "<bento-base-image>" if args.dry_run else bento_base_image(bento)
        if not args.dry_run:
            containerfile.write_text(runtime_containerfile(args.backend, bento_image))
        # --format docker keeps HEALTHCHECK, which the OCI image format has no field for.
        fmt = ["--format", "docker"] if args.backend == "podman" else []
        run([args.backend, "build", *fmt, *engine_net, "--build-arg", f"BENTO_IMAGE={bento_image}",
             "--build-arg", f"BASE_IMAGE={base}",
             "--label", "org.opencontainers.image.title=seqserve", "--label", f"seqserve.bento={bento}",
             "--label", f"seqserve.variant={args.variant}",
             "-f", str(containerfile), "-t", args.tag, str(ROOT / "container")], args.dry_run)

    print(" ".join(f"{name}: {seconds:.0f}s" for name, seconds in timings.items()))
    print(f"image {args.tag} (bento {bento}); run it: {args.backend} run --rm -p 3000:3000 {args.tag}")
    return args.tag


if __name__ == "__main__":
    main()
