#!/usr/bin/env bash
# Build the Debian bookworm + Python 3.11 base image locally, with no container registry:
# debootstrap a minimal root file system from the Debian mirror apt already uses, then import it.
#
#   container/base-image.sh [TAG]        default TAG: localhost/seqserve-base:bookworm
#
# Needs root, debootstrap and podman (or docker: SEQSERVE_CONTAINER_ENGINE=docker).
# Settings: SEQSERVE_DEBIAN_MIRROR (default: the first Debian URI in /etc/apt/sources.list*),
#           SEQSERVE_DEBIAN_SUITE (default: bookworm, whose python3 is 3.11 like the project's).
set -euo pipefail

tag=${1:-localhost/seqserve-base:bookworm}
engine=${SEQSERVE_CONTAINER_ENGINE:-podman}
suite=${SEQSERVE_DEBIAN_SUITE:-bookworm}
apt_mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
mirror=${SEQSERVE_DEBIAN_MIRROR:-${apt_mirror:-http://deb.debian.org/debian}}

[ "$(id -u)" = 0 ] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base-image.sh: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }

rootfs=$(mktemp -d /var/tmp/seqserve-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "base-image.sh: debootstrap $suite from $mirror" >&2
# python3-venv: BentoML's image makes a venv; python3-pip: it pip-installs uv first.
# tini: a PID 1 that forwards SIGTERM and reaps children, so `podman stop` / Kubernetes stop it at once.
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,tini \
    "$suite" "$rootfs" "$mirror" >/dev/null

# TLS to the package registries may be re-signed by a site CA: trust the same CAs as this machine.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc "$rootfs"/usr/share/man

# Debian's pip refuses to install outside a venv (PEP 668) unless told; BentoML's first step is
# `pip install uv`. uv and pip read the system CA bundle through SSL_CERT_FILE / PIP_CERT.
tar -C "$rootfs" -c . | "$engine" import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    - "$tag" >/dev/null
echo "$tag"
