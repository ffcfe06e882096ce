#!/usr/bin/env bash
# Remove the lab made by scripts/lab-up.sh: its containers (label s2.fleet.lab=1) and the
# network s2-lab. The base image stays (scripts/build-base-image.sh reuses it).
#
#   sudo scripts/lab-down.sh
#
# Idempotent: nothing to remove is not an error. The network is kept (with a message) while
# containers that are not lab containers (a molecule scenario, say) are still attached to it.
set -euo pipefail

NETWORK="${S2_LAB_NETWORK:-s2-lab}"
LABEL=s2.fleet.lab=1

log() { printf 'lab-down: %s\n' "$*"; }
die() { printf 'lab-down: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman)"
command -v podman >/dev/null || { log "podman is not installed: nothing to remove"; exit 0; }

mapfile -t ids < <(podman ps --all --quiet --filter "label=$LABEL")
if ((${#ids[@]})); then
  names=$(podman ps --all --filter "label=$LABEL" --format '{{.Names}}' | sort | tr '\n' ' ')
  podman rm --force --time 5 "${ids[@]}" >/dev/null
  log "removed ${#ids[@]} containers: $names"
else
  log "no lab containers"
fi

if podman network exists "$NETWORK"; then
  others=$(podman ps --all --filter "network=$NETWORK" --format '{{.Names}}' | tr '\n' ' ')
  if [[ -n $others ]]; then
    log "keeping network $NETWORK: still used by $others"
  else
    podman network rm "$NETWORK" >/dev/null
    log "removed network $NETWORK"
  fi
else
  log "no network $NETWORK"
fi
