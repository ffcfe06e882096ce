#!/usr/bin/env bash
# The lab's SSH material on the controller, shared by scripts/lab-up.sh and the molecule
# scenarios' create.yml: Ansible reaches the lab containers over SSH as root with it, exactly
# like production hosts (inventories/lab, molecule/default/molecule.yml).
#
#   bash scripts/lab-ssh.sh key                            # make .lab-ssh/id_ed25519 once; print the dir
#   bash scripts/lab-ssh.sh known-hosts NAME=IP [NAME=IP]  # pin the containers' host keys
#
# .lab-ssh/ (git-ignored, 0700) holds:
#   id_ed25519, id_ed25519.pub  made once per checkout; the public key is mounted read-only as
#                               /root/.ssh/authorized_keys into every lab container when it is
#                               created (never baked into the image: each controller has its own)
#   known_hosts                 the lab's own known_hosts, rewritten each time containers are
#                               created: each container's host key (made at its first boot) is
#                               read through `podman exec`, a channel that needs no trust on
#                               first use, so SSH runs with StrictHostKeyChecking=yes against it.
#                               Re-created containers get new keys under the same IPs; a lab file
#                               rewritten at create time never goes stale, and ~/.ssh/known_hosts
#                               is never touched.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.lab-ssh"

die() { printf 'lab-ssh: ERROR: %s\n' "$*" >&2; exit 1; }

key() {
  install -d -m 0700 "$dir"
  if [[ ! -s $dir/id_ed25519 ]]; then
    ssh-keygen -q -t ed25519 -N '' -C "s2-fleet-lab@$(hostname)" -f "$dir/id_ed25519" </dev/null
  fi
  printf '%s\n' "$dir"
}

known_hosts() {
  (($#)) || die "known-hosts needs NAME=IP arguments"
  install -d -m 0700 "$dir"
  local tmp spec name ip hostkey i
  tmp=$(mktemp "$dir/known_hosts.XXXXXX")
  for spec in "$@"; do
    name=${spec%%=*}
    ip=${spec#*=}
    # sshd makes its host keys at its first start (ssh-keygen -A): wait for them
    for ((i = 0; ; i++)); do
      hostkey=$(podman exec "$name" cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null) && [[ -n $hostkey ]] && break
      ((i < 60)) || { rm -f "$tmp"; die "$name has no SSH host key after 60 s (is sshd running? podman exec $name ps -e)"; }
      sleep 1
    done
    # "ssh-ed25519 AAAA... root@host" -> "IP,NAME ssh-ed25519 AAAA..."
    printf '%s,%s %s\n' "$ip" "$name" "$(cut -d' ' -f1-2 <<<"$hostkey")" >>"$tmp"
  done
  chmod 0600 "$tmp"
  mv "$tmp" "$dir/known_hosts"
}

command -v ssh-keygen >/dev/null || die "ssh-keygen is missing (apt-get install openssh-client)"
case ${1:-} in
  key) key ;;
  known-hosts) shift; known_hosts "$@" ;;
  *) die "usage: $0 key | known-hosts NAME=IP..." ;;
esac
