#!/usr/bin/env bash
# The fleet test protocol (docs/RELIABILITY.md): the 13 steps against the nine-host lab, with a
# table of measured figures at the end (also written to artifacts/reliability.md).
#
#   bash scripts/reliability.sh            # cold: lab down, containers up, site.yml timed (step 1), protocol
#   bash scripts/reliability.sh --running  # the protocol on the lab that is up now; step 1 reads the
#                                          # converge log of $S2_CONVERGE_LOG ($S2_CONVERGE_SECONDS)
#   bash scripts/reliability.sh --running -k test_11   # extra arguments go to pytest
#
# Needs root (rootful podman). The protocol kills the bridge, cuts a worker off the network and
# rotates every token: run it on a lab, never on a production fleet. It leaves the lab up and
# healthy; remove it with scripts/lab-down.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
logs="$root/artifacts"
mkdir -p "$logs"
say() { printf 'reliability: %s\n' "$*"; }

running=false
if [[ ${1:-} == --running ]]; then
  running=true
  shift
fi
[[ -x $venv/bin/pytest ]] || bash scripts/test.sh setup
export PATH="$venv/bin:$PATH"

if ! $running; then
  bash scripts/lab-down.sh >/dev/null 2>&1 || true
  bash scripts/lab-up.sh --containers-only
  say "step 1: ansible-playbook site.yml -i inventories/lab (cold, timed)"
  start=$(date +%s.%N)
  ANSIBLE_FORCE_COLOR=0 ansible-playbook site.yml -i inventories/lab 2>&1 | tee "$logs/reliability-converge.log"
  export S2_CONVERGE_SECONDS
  S2_CONVERGE_SECONDS=$(awk "BEGIN { print $(date +%s.%N) - $start }")
  export S2_CONVERGE_LOG="$logs/reliability-converge.log"
fi
[[ -n ${S2_CONVERGE_LOG:-} ]] || say "S2_CONVERGE_LOG is not set: steps 1 and 2 will be skipped"

say "the protocol (tests/reliability)"
cd tests/reliability
exec pytest -v "$@"
