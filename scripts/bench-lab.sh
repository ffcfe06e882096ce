#!/usr/bin/env bash
# Time the lab, before and after: Ansible reaching the nine containers through `podman exec`
# (containers.podman.podman, how the lab ran until issue 13) and through SSH (inventories/lab,
# as production). For each connection: a cold lab-up (containers created, then site.yml) and an
# idempotent re-run (site.yml again, which must change nothing). Every figure is printed with
# the load average read when it was taken: compare the two connections as ratios within one
# run, never figures across runs. A benchmark, not a test: it prints figures and asserts nothing.
#
#   bash scripts/bench-lab.sh                # both connections, cold + re-run each (4 converges)
#   bash scripts/bench-lab.sh --rerun-only   # on the lab that is up and converged: a re-run per connection
#   bash scripts/bench-lab.sh --keep         # leave the lab up afterwards
#   S2_BENCH_PROFILE=1 bash scripts/bench-lab.sh   # also the 15 costliest tasks of each run
#                                                  # (ansible.posix.profile_tasks; logs in artifacts/)
#
# Needs root (rootful podman). Uses scripts/lab-up.sh --containers-only for the containers.
# The controller's wheel set (~/.cache/s2-fleet/wheels, s2_fleet_wheel_cache_dir) is built by the first converge of a fresh
# checkout; the script says whether it was there, since building it lands in the first cold figure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
INVENTORY=inventories/lab
keep=false
rerun_only=false
for arg in "$@"; do
  case $arg in
    --keep) keep=true ;;
    --rerun-only) rerun_only=true; keep=true ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) printf 'bench-lab: unknown argument %s\n' "$arg" >&2; exit 2 ;;
  esac
done
logs="$root/artifacts"
mkdir -p "$logs"
export PATH="$root/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0
[[ -n ${S2_BENCH_PROFILE:-} ]] && export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks

say() { printf 'bench-lab: %s\n' "$*"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.1f\", $2 - $1 }"; }

# "before": the same hosts through podman exec (containers.podman.podman, user '': files through
# the container's mounted filesystem), as inventories/lab was until issue 13. Every variable is
# the SSH inventory's, ansible_host (the static IP) included, so both runs converge to the very
# same state (bridge URL, certificate names) and a re-run after either changes nothing. The
# podman connection takes ansible_host as the container's name, so it calls podman through a
# wrapper that turns each lab IP back into its container's name (one extra sh per podman call).
podman_inv="$logs/bench-lab-podman-inventory"
rm -rf "$podman_inv"
mkdir -p "$podman_inv"
ln -s "$root/inventories/s2/group_vars" "$podman_inv/group_vars"
ln -s "$root/inventories/s2/host_vars" "$podman_inv/host_vars"
ansible-inventory -i "$INVENTORY" --list | python3 -c '
import json, sys
inv, wrapper = json.load(sys.stdin), sys.argv[1]
hostvars = inv["_meta"]["hostvars"]
def hosts(group):
    entry = inv.get(group, {})
    out = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        out += hosts(child)
    return out
def conn(h):
    return {"ansible_connection": "containers.podman.podman", "ansible_user": "",
            "ansible_host": hostvars[h]["ansible_host"], "ansible_podman_executable": wrapper,
            "ansible_python_interpreter": "/usr/bin/python3"}
doc = {"s2_fleet": {"children": {
    g: {"hosts": {h: conn(h) for h in hosts(g)}} for g in inv["s2_fleet"]["children"]}}}
print(json.dumps(doc, indent=1))
cases = ""
for h in hosts("all"):
    ip = hostvars[h]["ansible_host"]
    cases += "    %s) set -- \"$@\" %s ;;\n    %s:*) set -- \"$@\" %s:${a#*:} ;;\n" % (ip, h, ip, h)
with open(wrapper, "w") as f:
    f.write("#!/bin/sh\n# bench-lab.sh: podman with each lab IP argument replaced by its container name\n"
            "n=$#\nwhile [ $n -gt 0 ]; do\n  a=$1; shift; n=$((n - 1))\n  case $a in\n"
            + cases + "    *) set -- \"$@\" \"$a\" ;;\n  esac\ndone\nexec podman \"$@\"\n")
' "$podman_inv/podman-by-ip" >"$podman_inv/hosts.yml"
chmod 0755 "$podman_inv/podman-by-ip"

declare -A inv_of=([podman]="$podman_inv" [ssh]="$INVENTORY")
declare -A label_of=([podman]="before: podman exec" [ssh]="after: SSH")
rows=()
row() { rows+=("$(printf '%-46s %9s %8s   %s' "$1" "$2" "$3" "$4")"); }

# one site.yml run: log, seconds, changed total, failed/unreachable total
converge() {
  local conn=$1 what=$2 log="$logs/bench-lab-$1-$2.log" t0 t1 rc=0
  t0=$(now)
  ansible-playbook site.yml -i "${inv_of[$conn]}" >"$log" 2>&1 || rc=$?
  t1=$(now)
  local changed bad
  changed=$(grep -Eo ' changed=[0-9]+' "$log" | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
  bad=$(grep -Eo '(unreachable|failed)=[0-9]+' "$log" | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
  ((rc == 0 && bad == 0)) || say "WARNING: $conn $what: ansible-playbook exited $rc, failed/unreachable=$bad (see $log)"
  LAST_S=$(secs "$t0" "$t1")
  LAST_CHANGED=$changed
  if [[ -n ${S2_BENCH_PROFILE:-} ]]; then
    say "$conn $what: costliest tasks"
    # profile_tasks' own recap (its per-task timestamps belong to the task before them)
    sed -n '/^TASKS RECAP/,$p' "$log" | grep -E ' -+ [0-9.]+s$' | head -15 | sed 's/^/    /'
  fi
}

containers_up() {
  local t0 t1
  bash scripts/lab-down.sh >/dev/null 2>&1 || true
  t0=$(now)
  bash scripts/lab-up.sh --containers-only >"$logs/bench-lab-containers.log" 2>&1
  t1=$(now)
  LAST_S=$(secs "$t0" "$t1")
}

wheels=$(find "$HOME/.cache/s2-fleet/wheels" -name .complete 2>/dev/null | wc -l)
say "wheel sets already built on the controller: $wheels$( ((wheels)) || echo ' (the first cold converge builds one)')"

for conn in podman ssh; do
  if ! $rerun_only; then
    containers_up
    up_s=$LAST_S up_load=$(load)
    converge "$conn" cold
    total=$(awk "BEGIN { printf \"%.1f\", $up_s + $LAST_S }")
    row "${label_of[$conn]}: containers up" "$up_s" "-" "$up_load"
    row "${label_of[$conn]}: cold converge" "$LAST_S" "$LAST_CHANGED" "$(load)"
    row "${label_of[$conn]}: cold lab-up (sum)" "$total" "-" "$(load)"
  fi
  converge "$conn" rerun
  row "${label_of[$conn]}: idempotent re-run" "$LAST_S" "$LAST_CHANGED" "$(load)"
done

printf '\n%-46s %9s %8s   %s\n' "step ($(nproc) cores, base $(git rev-parse --short HEAD))" "seconds" "changed" "load average (1/5/15 min)"
printf '%s\n' "${rows[@]}"
say "logs in $logs/bench-lab-*.log"
$keep || bash scripts/lab-down.sh >/dev/null
