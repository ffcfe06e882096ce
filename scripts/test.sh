#!/usr/bin/env bash
# Run every test of the project. Installs what it needs first (idempotent), so it works on a
# fresh Debian 12 machine as root as well as on a developer's machine.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh unit lint  # only some stages: setup unit lint ansible sanity molecule
#
# Stages:
#   setup     .venv with requirements-dev.txt and the runtime (editable); the Codex CLI from npm
#   unit      ruff, then pytest on the runtime (real bridge on loopback, real TLS, real SQLite)
#   ansible   syntax-check of site.yml, ansible-lint (production profile), module tests
#   sanity    ansible-test sanity on the collection, offline
#   molecule  the nine-host fleet and the no-systemd worker in podman containers, and the fleet
#             test protocol (scripts/reliability.sh) on the nine hosts before they go
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(setup unit ansible sanity molecule)

say() { printf '\n=== %s ===\n' "$*"; }
want() { local s; for s in "${stages[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

# The Codex CLI the runtime's codex-trust-hooks command is tested against (npm registry).
codex_version=0.171.0

setup() {
  say "setup: virtual environment"
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt -e files/s2-bridge
  say "setup: Codex CLI $codex_version (npm)"
  if [[ $(codex --version 2>/dev/null) != *"$codex_version"* ]]; then
    npm install -g --no-fund --no-audit --loglevel=error "@openai/codex@$codex_version"
  fi
}

unit() {
  say "unit: ruff"
  "$venv/bin/ruff" check .
  "$venv/bin/ruff" format --check .
  say "unit: runtime tests"
  # Three workers: most tests wait on a server subprocess, not on the CPU.
  (cd files/s2-bridge && "$venv/bin/pytest" -q -p no:cacheprovider -n 3)
}

ansible_checks() {
  say "ansible: syntax-check of site.yml and every playbook"
  local playbook
  for playbook in site.yml playbooks/*.yml; do
    "$venv/bin/ansible-playbook" -i inventories/s2 --syntax-check "$playbook" >/dev/null
  done
  say "ansible: ansible-lint (production profile)"
  "$venv/bin/ansible-lint" --profile production
  say "ansible: module tests against a real bridge"
  "$venv/bin/pytest" -q -p no:cacheprovider collections/ansible_collections/s2/fleet/tests/unit
}

sanity() {
  say "sanity: ansible-test sanity (offline), ansible-doc, changelog lint"
  PYTHON="$venv/bin/python" bash scripts/sanity.sh
}

molecule_scenarios() {
  say "molecule: podman and the base image (idempotent)"
  bash scripts/podman-setup.sh
  bash scripts/build-base-image.sh
  local logs="$root/artifacts"
  mkdir -p "$logs"
  (
    export PATH="$venv/bin:$PATH"
    # The default scenario's working directory at a known place: its inventory and ansible.cfg
    # serve the check-mode run below (.cache/ is git-ignored).
    export MOLECULE_EPHEMERAL_DIRECTORY="$root/.cache/molecule/default"
    # Whatever happens, leave no container behind.
    trap 'MOLECULE_EPHEMERAL_DIRECTORY="$root/.cache/molecule/default" molecule destroy >/dev/null 2>&1 || true' EXIT
    say "molecule default: nine hosts, create + converge"
    molecule destroy >/dev/null 2>&1 || true
    molecule create
    # The verifier greps this log (converge and idempotence output) for tokens.
    local start converge_s
    start=$(date +%s.%N)
    molecule converge 2>&1 | tee "$logs/converge.log"
    converge_s=$(awk "BEGIN { print $(date +%s.%N) - $start }")
    say "molecule default: idempotence (a second converge must change nothing)"
    molecule idempotence 2>&1 | tee -a "$logs/converge.log"
    say "molecule default: check mode (site.yml --check --diff on the converged fleet changes nothing)"
    ANSIBLE_CONFIG="$MOLECULE_EPHEMERAL_DIRECTORY/ansible.cfg" \
      bash scripts/check-mode.sh "$MOLECULE_EPHEMERAL_DIRECTORY/inventory" "$logs/check-mode.log"
    say "molecule default: the status playbook (every worker healthy, through admin.toml on port 9443)"
    ANSIBLE_CONFIG="$MOLECULE_EPHEMERAL_DIRECTORY/ansible.cfg" ansible-playbook playbooks/status.yml \
      -i "$MOLECULE_EPHEMERAL_DIRECTORY/inventory" -e s2_status_require_healthy=true 2>&1 | tee "$logs/status.log"
    say "molecule default: verify"
    S2_CONVERGE_LOG="$logs/converge.log" molecule verify
    say "reliability: the fleet test protocol on the same nine containers (docs/RELIABILITY.md)"
    # with molecule's inventory: the scenario's own port and listen address (s2-scenario.yml)
    S2_LAB_INVENTORY="$MOLECULE_EPHEMERAL_DIRECTORY/inventory" \
      S2_CONVERGE_LOG="$logs/converge.log" S2_CONVERGE_SECONDS=$converge_s bash scripts/reliability.sh --running
    molecule destroy
    say "molecule wsl: a worker without systemd"
    unset MOLECULE_EPHEMERAL_DIRECTORY
    molecule test -s wsl
  )
}

# Always make sure the venv exists: every other stage runs from it.
if want setup || [[ ! -x $venv/bin/pytest ]]; then setup; fi
want unit && unit
want ansible && ansible_checks
want sanity && sanity
want molecule && molecule_scenarios
say "done: ${stages[*]}"
