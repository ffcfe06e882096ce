#!/usr/bin/env bash
# The collection as its users get it: build the s2.fleet tarball (runtime inside), install it with
# `ansible-galaxy collection install` into an empty directory outside this repository, and run
# a user's playbook from there against an inventory, using only the installed collection.
#
#   bash scripts/collection-test.sh INVENTORY [ansible-playbook options...]
#
# The user's project (S2_USER_PROJECT, default: a new temporary directory) holds nothing but
# ansible.cfg, site.yml (`import_playbook: s2.fleet.site`) and collections/ (the installed
# tarball). Nothing of this checkout is on Ansible's collection path there: the roles, the
# modules and the runtime wheel all come from the tarball. Prints the run's output; the last
# line is the recap's total of changed tasks: `collection-test: changed=N`.
# molecule/wsl/converge.yml converges the wsl scenario this way (so its idempotence step is
# the installed collection's too).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
[[ $# -ge 1 ]] || { echo "usage: $0 INVENTORY [ansible-playbook options...]" >&2; exit 2; }
inventory=$(realpath "$1")
shift
project=${S2_USER_PROJECT:-$(mktemp -d /tmp/s2-user-project.XXXXXX)}
case $project in "$root"|"$root"/*)
  echo "collection-test: S2_USER_PROJECT must be outside $root" >&2; exit 2 ;;
esac
mkdir -p "$project"

# 1. the tarball, 2. installed into the project's own collections/ (empty before).
dist=$project/dist
bash "$root/scripts/build-collection.sh" "$dist" >/dev/null
tarball=$(ls -1 "$dist"/s2-fleet-*.tar.gz)
rm -rf "$project/collections"
"$venv/bin/ansible-galaxy" collection install --no-deps --force \
  -p "$project/collections" "$tarball" >/dev/null

# 3. the user's project: only the installed collection and the ansible package's own ones.
cat >"$project/ansible.cfg" <<'EOF'
[defaults]
collections_path = ./collections
collections_scan_sys_path = true
interpreter_python = auto_silent
callback_result_format = yaml
retry_files_enabled = false
no_target_syslog = true
[ssh_connection]
pipelining = true
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
EOF
cat >"$project/site.yml" <<'EOF'
---
# A user's playbook: the whole fleet from the installed s2.fleet collection.
- name: The s2 fleet
  ansible.builtin.import_playbook: s2.fleet.site
EOF

# Only the installed copy of s2.fleet is visible from the project.
seen=$(cd "$project" && unset ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS &&
  "$venv/bin/ansible-galaxy" collection list s2.fleet 2>/dev/null | awk '/^# /{print $2}')
if [[ $seen != "$project/collections/ansible_collections" ]]; then
  echo "collection-test: s2.fleet is visible from: $seen (want only $project/collections)" >&2; exit 1
fi

# 4. run it from the project, with this checkout's configuration out of the way.
log=$project/run.log
(
  cd "$project"
  unset ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS ANSIBLE_ROLES_PATH
  ANSIBLE_FORCE_COLOR=0 "$venv/bin/ansible-playbook" -i "$inventory" site.yml "$@"
) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || { echo "collection-test: the playbook failed (rc $rc); log: $log" >&2; exit "$rc"; }
changed=$(awk '/^PLAY RECAP/ {recap = 1; next} recap && /changed=/ {
  for (i = 1; i <= NF; i++) if ($i ~ /^changed=/) { split($i, kv, "="); total += kv[2] } }
  END { print total + 0 }' "$log")
echo "collection-test: changed=$changed"
