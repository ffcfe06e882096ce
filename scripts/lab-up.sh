#!/usr/bin/env bash
# Run the whole s2 fleet on this machine: the hosts of inventories/lab as podman containers
# with systemd as PID 1 on the network s2-lab, provisioned by site.yml over SSH (as production
# machines are), then the fleet table.
#
#   sudo scripts/lab-up.sh                    # everything
#   sudo scripts/lab-up.sh --containers-only  # only podman, the image and the containers
#
# Idempotent: installed packages, the image, the network and running containers are reused;
# stopped lab containers are started again. Remove everything with scripts/lab-down.sh.
# Needs root (rootful podman), Debian 12, and access to the Debian and PyPI mirrors.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
IMAGE="${S2_BASE_IMAGE:-localhost/s2-fleet-debian:12}"
NETWORK="${S2_LAB_NETWORK:-s2-lab}"
INVENTORY=inventories/lab
LABEL=s2.fleet.lab=1
venv="$root/.venv"

log() { printf 'lab-up: %s\n' "$*"; }
die() { printf 'lab-up: ERROR: %s\n' "$*" >&2; exit 1; }

containers_only=false
for arg in "$@"; do
  case $arg in
    --containers-only) containers_only=true ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (use --containers-only or --help)" ;;
  esac
done
[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman)"

start=$(date +%s)
S2_LAB_NETWORK=$NETWORK bash scripts/podman-setup.sh
S2_BASE_IMAGE=$IMAGE bash scripts/build-base-image.sh

# The controller side: ansible from the project's venv (scripts/test.sh setup creates it).
if [[ ! -x $venv/bin/ansible-playbook ]]; then
  log "no $venv/bin/ansible-playbook: creating the venv (scripts/test.sh setup)"
  bash scripts/test.sh setup
fi
export PATH="$venv/bin:$PATH"

# The hosts come from the inventory, with their static address on $NETWORK (ansible_host): add
# a worker there and it gets a container here.
mapfile -t specs < <(ansible-inventory -i "$INVENTORY" --list 2>/dev/null | python3 -c '
import json, sys
inv = json.load(sys.stdin)
hostvars = inv.get("_meta", {}).get("hostvars", {})
seen = []
def walk(group):
    entry = inv.get(group, {})
    for h in entry.get("hosts", []):
        if h not in seen:
            seen.append(h)
    for child in entry.get("children", []):
        walk(child)
walk("all")
for h in seen:
    print(h + "=" + str(hostvars.get(h, {}).get("ansible_host", "")))')
((${#specs[@]})) || die "no hosts in $INVENTORY (ansible-inventory -i $INVENTORY --graph)"
hosts=("${specs[@]%%=*}")
log "hosts: ${hosts[*]}"

# The lab's SSH key (made once, git-ignored): its public half is root's authorized_keys in
# every container, mounted read-only at create time (the image holds no key).
ssh_dir=$(bash scripts/lab-ssh.sh key)

for spec in "${specs[@]}"; do
  h=${spec%%=*}
  ip=${spec#*=}
  [[ -n $ip ]] || die "$h has no ansible_host in $INVENTORY: each lab host needs its static address on $NETWORK"
  if podman container exists "$h"; then
    if [[ $(podman container inspect "$h" --format '{{index .Config.Labels "s2.fleet.lab"}}') != 1 ]]; then
      die "container $h exists but is not a lab container (a molecule scenario? run 'molecule destroy' or 'podman rm -f $h')"
    fi
    if [[ $(podman container inspect "$h" --format '{{.State.Running}}') == true ]]; then
      log "$h is running"
    else
      podman start "$h" >/dev/null
      log "$h started again"
    fi
  else
    podman run --detach --quiet --name "$h" --hostname "$h" \
      --systemd=always --cap-add SYS_ADMIN --network "$NETWORK" --ip "$ip" --label "$LABEL" \
      --volume "$ssh_dir/id_ed25519.pub:/root/.ssh/authorized_keys:ro" \
      "$IMAGE" >/dev/null
    log "$h created ($ip)"
  fi
done

for h in "${hosts[@]}"; do
  state=$(podman exec "$h" timeout 90 systemctl is-system-running --wait || true)
  if [[ $state != running ]]; then
    podman exec "$h" systemctl --failed --no-legend --plain >&2 || true
    die "systemd in $h is '$state' (failed units above)"
  fi
done
# Pin each container's host key (read through podman exec) in the lab's own known_hosts.
bash scripts/lab-ssh.sh known-hosts "${specs[@]}"
log "${#hosts[@]} containers up with systemd and sshd running ($(($(date +%s) - start))s so far)"

if $containers_only; then
  log "--containers-only: not provisioning; next: ansible-playbook site.yml -i $INVENTORY"
  exit 0
fi

[[ -f site.yml ]] || die "site.yml is missing: nothing to provision with"
log "provisioning: ansible-playbook site.yml -i $INVENTORY"
ansible-playbook site.yml -i "$INVENTORY"

log "fleet status: ansible-playbook playbooks/status.yml -i $INVENTORY"
ansible-playbook playbooks/status.yml -i "$INVENTORY"
log "lab is up in $(($(date +%s) - start))s; remove it with scripts/lab-down.sh"
