#!/usr/bin/env bash
# Build the systemd base image the lab and molecule containers run: localhost/s2-fleet-debian:12.
#
#   sudo scripts/build-base-image.sh            # build unless the image exists with this recipe
#   sudo scripts/build-base-image.sh --rebuild  # build even if it exists
#
# No container registry is reachable, so the image is made from Debian packages with mmdebstrap
# (bookworm, variant minbase, no docs/man/locales) and imported with 'podman import'.
# The recipe's hash is stored in the image label s2.fleet.recipe: an image built from an older
# recipe is rebuilt automatically.
set -euo pipefail

IMAGE="${S2_BASE_IMAGE:-localhost/s2-fleet-debian:12}"
MIRROR="${S2_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${S2_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm

# What the roles and tests need on a "host": systemd as PID 1, python3 for Ansible, a venv for the
# runtime, sudo for become, CA certificates, ip/ps for debugging and testinfra, and sshd: the lab
# and molecule reach their hosts over SSH like production (the key is mounted at create time).
PACKAGES=(systemd systemd-sysv dbus python3 python3-venv sudo iproute2 procps ca-certificates
  openssh-server openssh-sftp-server)

# Units that cannot work in a container (no real console, no kernel modules, no hardware clock,
# read-only /sys): masked so 'systemctl is-system-running' reports running, not degraded.
MASK_UNITS=(
  getty@tty1.service console-getty.service serial-getty@.service
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount
  sys-kernel-tracing.mount sys-fs-fuse-connections.mount systemd-remount-fs.service
  systemd-firstboot.service systemd-hwdb-update.service systemd-timesyncd.service
  e2scrub_all.timer e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer
)

log() { printf 'build-base-image: %s\n' "$*"; }
die() { printf 'build-base-image: ERROR: %s\n' "$*" >&2; exit 1; }

rebuild=false
for arg in "$@"; do
  case $arg in
    --rebuild) rebuild=true ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (use --rebuild or --help)" ;;
  esac
done

[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman and mmdebstrap in root mode)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run scripts/podman-setup.sh first"
command -v podman >/dev/null || die "podman is missing: run scripts/podman-setup.sh first"

# The recipe hash covers everything that changes the image content.
recipe=$(printf '%s\n' "$SUITE" "$MIRROR" "${PACKAGES[@]}" "${MASK_UNITS[@]}" "$(sed -n '/^customize()/,/^}/p' "$0")" | sha256sum | cut -c1-16)

if podman image exists "$IMAGE" && ! $rebuild; then
  have=$(podman image inspect "$IMAGE" --format '{{index .Labels "s2.fleet.recipe"}}')
  if [[ $have == "$recipe" ]]; then
    log "$IMAGE exists (recipe $recipe, $(podman image inspect "$IMAGE" --format '{{.Size}}' | numfmt --to=iec)); nothing to do (--rebuild forces a build)"
    exit 0
  fi
  log "$IMAGE exists but was built from another recipe (${have:-none} != $recipe): rebuilding"
fi

# customize: runs after the packages are installed; $1 is the root of the new tree.
customize() {
  local root=$1
  # Units that cannot run in a container.
  local u
  for u in "${MASK_UNITS[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system/$u"; done
  # A fresh machine-id on the first boot of every container.
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  # Behave like an ordinary Debian host for the roles: apt installs recommends again.
  rm -f "$root/etc/apt/apt.conf.d/99mmdebstrap"
  # Keep docs out when the roles install more packages (as Debian's slim images do).
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-s2-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  # sshd: no host keys in the image (every container makes its own at its first start, so no
  # two containers share one); key login only. ssh.service is enabled by the package.
  rm -f "$root"/etc/ssh/ssh_host_*
  install -d "$root/etc/systemd/system/ssh.service.d"
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"$root/etc/systemd/system/ssh.service.d/s2-host-keys.conf"
  printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n' \
    >"$root/etc/ssh/sshd_config.d/s2-lab.conf"
  # journald: volatile and small; the containers are throwaway.
  install -d "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' >"$root/etc/systemd/journald.conf.d/s2-container.conf"
  rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/log/"*.log
}

work=$(mktemp -d /var/tmp/s2-base-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "building $IMAGE from Debian $SUITE ($MIRROR) with: ${PACKAGES[*]}"

include=$(IFS=,; echo "${PACKAGES[*]}")
mmdebstrap \
  --mode=root \
  --variant=minbase \
  --include="$include" \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --quiet \
  "$SUITE" "$work/rootfs" \
  "deb $MIRROR $SUITE main" \
  "deb $MIRROR $SUITE-updates main" \
  "deb $SECURITY_MIRROR $SUITE-security main" </dev/null

customize "$work/rootfs"

log "importing into podman as $IMAGE"
tar -C "$work/rootfs" --numeric-owner --xattrs -c . |
  podman import --quiet \
    --change 'CMD ["/sbin/init"]' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENV container=podman' \
    --change "LABEL s2.fleet.recipe=$recipe" \
    --change "LABEL org.opencontainers.image.title=s2-fleet-debian" \
    --change "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    - "$IMAGE" >/dev/null

# A rebuild leaves the previous image untagged: drop it unless a container still uses it.
podman image prune --force --filter label=org.opencontainers.image.title=s2-fleet-debian >/dev/null

elapsed=$(($(date +%s) - start))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
log "built $IMAGE in ${elapsed}s, size $(numfmt --to=iec "$size") ($size bytes), recipe $recipe"
