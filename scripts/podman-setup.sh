#!/usr/bin/env bash
# Install and configure rootful podman on Debian 12 (bookworm) for the s2-fleet lab and molecule.
#
#   sudo scripts/podman-setup.sh            # install, configure, create the s2-lab network, smoke test
#   S2_LAB_NETWORK=other scripts/podman-setup.sh
#
# Idempotent: packages already installed are left alone, containers.conf is rewritten only when its
# content differs (the previous file is kept as containers.conf.bak.<UTC time>), the network is
# created only when absent.
#
# Why each package (Debian 12):
#   podman        the engine (4.3.1)
#   runc          crun (podman's default in Debian) rejects hosts with hybrid cgroup v1/v2
#   netavark      network backend; podman 4 prefers it over CNI when it is installed
#   aardvark-dns  DNS on user-defined networks: containers resolve each other by name
#   iptables      netavark 1.4 programs NAT/forwarding with iptables (nft backend)
#   uidmap, slirp4netns, catatonit   podman's recommends for rootless use and --init
#   mmdebstrap    builds the base image from Debian packages (no registry is reachable)
set -euo pipefail

NETWORK="${S2_LAB_NETWORK:-s2-lab}"
# A fixed subnet: the lab's hosts have static addresses in it (inventories/lab ansible_host,
# molecule/default/molecule.yml), reached over SSH like production machines.
SUBNET="${S2_LAB_SUBNET:-10.213.13.0/24}"
CONF=/etc/containers/containers.conf
# openssh-client: the controller reaches the lab and molecule hosts over SSH (scripts/lab-ssh.sh)
PACKAGES=(podman runc netavark aardvark-dns iptables uidmap slirp4netns catatonit mmdebstrap openssh-client)

log() { printf 'podman-setup: %s\n' "$*"; }
die() { printf 'podman-setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman is what the lab and molecule use)"
[[ -r /etc/debian_version ]] || die "this script supports Debian 12 (bookworm) only"
if ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
  log "warning: not Debian 12 (bookworm); continuing, package names may differ"
fi

# 1. packages --------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "packages already installed: ${PACKAGES[*]}"
fi

# 2. containers.conf -------------------------------------------------------------------------
# root has no CAP_SYS_RESOURCE here: containers may not raise limits above the host's hard limit.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1048576
desired=$(cat <<EOF
# Managed by s2-fleet scripts/podman-setup.sh; re-running the script rewrites this file.
[containers]
# Pinned to the host's hard nofile limit: without CAP_SYS_RESOURCE a higher value fails.
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]

[engine]
# This host has hybrid cgroups (v1 controllers + v2 unified) and no systemd as PID 1.
cgroup_manager = "cgroupfs"
events_logger = "file"
# crun rejects hybrid cgroups; runc handles them.
runtime = "runc"

[network]
network_backend = "netavark"
EOF
)
install -d -m 0755 /etc/containers
if [[ -f $CONF ]] && [[ "$(cat "$CONF")" == "$desired" ]]; then
  log "$CONF already up to date"
else
  if [[ -f $CONF ]]; then
    backup="$CONF.bak.$(date -u +%Y%m%dT%H%M%SZ)"
    cp -p "$CONF" "$backup"
    log "kept the previous $CONF as $backup"
  fi
  printf '%s\n' "$desired" >"$CONF.tmp"
  chmod 0644 "$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  log "wrote $CONF (nofile=$nofile)"
fi

# 3. network backend sanity: a switch from CNI to netavark needs a reset, never done silently ----
backend=$(podman info --format '{{.Host.NetworkBackend}}')
[[ $backend == netavark ]] || die "podman uses network backend '$backend', expected netavark; if containers from an older setup exist, remove them and run 'podman system reset' once"

# 4. the lab network ---------------------------------------------------------------------------
if podman network exists "$NETWORK"; then
  have=$(podman network inspect "$NETWORK" --format '{{range .Subnets}}{{.Subnet}} {{end}}' | xargs)
  if [[ $have == "$SUBNET" ]]; then
    log "network $NETWORK exists ($SUBNET)"
  elif [[ -z $(podman ps --all --quiet --filter "network=$NETWORK") ]]; then
    podman network rm "$NETWORK" >/dev/null
    podman network create --subnet "$SUBNET" "$NETWORK" >/dev/null
    log "re-created network $NETWORK with subnet $SUBNET (it had ${have:-none})"
  else
    die "network $NETWORK has subnet '${have}', not $SUBNET, and containers use it: remove them (scripts/lab-down.sh, molecule destroy) and re-run"
  fi
else
  podman network create --subnet "$SUBNET" "$NETWORK" >/dev/null
  log "created network $NETWORK ($SUBNET)"
fi
dns=$(podman network inspect "$NETWORK" --format '{{.DNSEnabled}}')
[[ $dns == true ]] || die "network $NETWORK has DNS disabled; remove it ('podman network rm $NETWORK') and re-run"

# 5. smoke test: a throwaway container that needs no image from a registry --------------------
# No registry is reachable: import a tiny image made of the host's /bin/true.
smoke_dir=$(mktemp -d)
trap 'rm -rf "$smoke_dir"' EXIT
if ! podman image exists localhost/s2-podman-smoke:1; then
  # /bin/true plus the shared libraries it links: enough for a container to start and exit 0.
  install -d "$smoke_dir/root/bin"
  cp /bin/true "$smoke_dir/root/bin/true"
  for lib in $(ldd /bin/true | grep -o '/[^ ]*'); do cp --parents "$lib" "$smoke_dir/root"; done
  tar -C "$smoke_dir/root" -c . | podman import --quiet --change 'CMD ["/bin/true"]' - localhost/s2-podman-smoke:1 >/dev/null
fi
name="s2-podman-smoke-$$"
if podman run --rm --name "$name" --network "$NETWORK" localhost/s2-podman-smoke:1 /bin/true; then
  log "smoke test passed: a container ran on network $NETWORK (runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), cgroup manager $(podman info --format '{{.Host.CgroupManager}}'))"
else
  die "smoke test failed: 'podman run --network $NETWORK' did not run /bin/true; see the error above"
fi
