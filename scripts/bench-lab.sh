#!/usr/bin/env bash
# Time the lab's cold converge and an idempotent re-run of all its hosts, and print both with
# the number of changed tasks. A benchmark, not a test: it prints figures and asserts nothing.
#
#   bash scripts/bench-lab.sh            # lab-down, containers up, cold site.yml, re-run
#   bash scripts/bench-lab.sh --keep     # leave the lab up afterwards
#
# Needs root (rootful podman). Uses scripts/lab-up.sh --containers-only for the containers, so
# the container start-up is timed apart from the converge.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
INVENTORY=inventories/lab
keep=false
[[ ${1:-} == --keep ]] && keep=true
logs="$root/artifacts"
mkdir -p "$logs"

say() { printf 'bench-lab: %s\n' "$*"; }

# changed=N summed over the PLAY RECAP of one ansible-playbook run's output
changed_total() {
  grep -Eo 'changed=[0-9]+' "$1" | cut -d= -f2 | awk '{ sum += $1 } END { print sum + 0 }'
}

bash scripts/lab-down.sh >/dev/null 2>&1 || true
t0=$(date +%s.%N)
bash scripts/lab-up.sh --containers-only >"$logs/bench-lab-containers.log" 2>&1
t1=$(date +%s.%N)
export PATH="$root/.venv/bin:$PATH"
ANSIBLE_FORCE_COLOR=0 ansible-playbook site.yml -i "$INVENTORY" >"$logs/bench-lab-cold.log" 2>&1
t2=$(date +%s.%N)
ANSIBLE_FORCE_COLOR=0 ansible-playbook site.yml -i "$INVENTORY" >"$logs/bench-lab-rerun.log" 2>&1
t3=$(date +%s.%N)

hosts=$(grep -c ' : ok=' "$logs/bench-lab-rerun.log")
printf '\n%-44s %10s %8s\n' "step ($hosts hosts, $(nproc) cores)" "seconds" "changed"
printf '%-44s %10.1f %8s\n' "containers up (systemd running)" "$(awk "BEGIN { print $t1 - $t0 }")" "-"
printf '%-44s %10.1f %8s\n' "cold converge: site.yml" "$(awk "BEGIN { print $t2 - $t1 }")" "$(changed_total "$logs/bench-lab-cold.log")"
printf '%-44s %10.1f %8s\n' "idempotent re-run: site.yml" "$(awk "BEGIN { print $t3 - $t2 }")" "$(changed_total "$logs/bench-lab-rerun.log")"
printf '\nload average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
say "logs in $logs/bench-lab-*.log"
$keep || bash scripts/lab-down.sh >/dev/null
