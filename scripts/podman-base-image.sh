#!/usr/bin/env bash
# Makes docker.io/library/debian:bookworm-slim available to podman on a
# machine that reaches Debian's package archive but no container registry:
# the image is built with debootstrap (about a minute) and trimmed like the
# official slim image. Does nothing when the image exists already.
#
#   scripts/podman-base-image.sh [MIRROR]    (default http://deb.debian.org/debian)
set -euo pipefail
image=docker.io/library/debian:bookworm-slim
mirror="${1:-http://deb.debian.org/debian}"

if podman image exists "$image"; then exit 0; fi
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || { echo "podman-base-image: $tool missing (scripts/install-deps.sh --container)" >&2; exit 1; }
done

rootfs="$(mktemp -d /tmp/ckpt-rootfs-XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "podman-base-image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
  { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# What the official slim image does: no docs, man pages or locales from
# later installs, no apt caches, the updates and security suites.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: ${mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | podman import -q --change 'CMD ["bash"]' - "$image" >/dev/null
echo "podman-base-image: imported $image" >&2
