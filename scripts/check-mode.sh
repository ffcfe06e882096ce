#!/usr/bin/env bash
# Run site.yml in check mode (--check --diff) against a fleet that is already converged and
# fail unless every host reports changed=0, failed=0 and unreachable=0 in the PLAY RECAP: check
# mode must predict "nothing to do" on a converged fleet, and must not break on it.
#
#   bash scripts/check-mode.sh                       # inventories/lab (scripts/lab-up.sh's lab)
#   bash scripts/check-mode.sh INVENTORY [LOG]       # e.g. molecule's inventory (scripts/test.sh)
#
# ANSIBLE_CONFIG is honoured (molecule's generated ansible.cfg, for its inventory). The output
# goes to LOG (default artifacts/check-mode.log); the tasks that report a change are listed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
inventory=${1:-inventories/lab}
log=${2:-$root/artifacts/check-mode.log}
mkdir -p "$(dirname "$log")"
export PATH="$root/.venv/bin:$PATH"

say() { printf 'check-mode: %s\n' "$*"; }

rc=0
ANSIBLE_FORCE_COLOR=0 ansible-playbook site.yml -i "$inventory" --check --diff >"$log" 2>&1 || rc=$?

# the recap: "HOST : ok=N changed=N unreachable=N failed=N ..."
recap=$(sed -n '/^PLAY RECAP/,$p' "$log" | grep -E ' : ok=[0-9]+' || true)
if [[ -z $recap ]]; then
  tail -30 "$log" >&2
  say "FAILED: no PLAY RECAP in $log (ansible-playbook exited $rc)"
  exit 1
fi
printf '%s\n' "$recap"
bad=$(grep -Ev 'changed=0 +unreachable=0 +failed=0 ' <<<"$recap" || true)
if [[ -n $bad || $rc -ne 0 ]]; then
  say "tasks that reported a change or failed in check mode:"
  awk '/^TASK \[/{t=$0} /^(changed|fatal|failed): /{ print "  " t " -> " $0 }' "$log" | sed -E 's/ \*+ -> / -> /' | head -40
  say "FAILED: site.yml --check on the converged fleet must change nothing (exit $rc; $log)"
  exit 1
fi
say "site.yml --check --diff: 0 changed, 0 failed, 0 unreachable on every host ($log)"
