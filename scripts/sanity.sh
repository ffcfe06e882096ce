#!/usr/bin/env bash
# Sanity of the s2.fleet collection, reliably on a machine that reaches only the package
# registries (PyPI, Debian, npm):
#   1. `ansible-test sanity` on collections/ansible_collections/s2/fleet, in ansible-test's own
#      per-test venvs (--venv) for this Python only;
#   2. `ansible-doc` renders every module (text and JSON);
#   3. `antsibull-changelog lint` on the changelog fragments.
#
# ansible-test bootstraps pip in each venv with a get-pip.py it downloads from
# ci-files.testing.ansible.com, which is not reachable here. It first looks for a cached copy in
# ~/.ansible/test/cache/get_pip_<version>.py, so this script puts a small stand-in there that
# uses the interpreter's own ensurepip and then pip from the package index. Everything else
# ansible-test installs comes from PyPI through the usual pip configuration.
#
# Usage: bash scripts/sanity.sh [extra ansible-test sanity options, e.g. --test pep8]
# Env:   PYTHON  the dev venv's python (default: .venv/bin/python at the repo root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COLLECTION="$ROOT/collections/ansible_collections/s2/fleet"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PYTHON")"

if [[ ! -x "$PYTHON" ]]; then
    echo "sanity.sh: $PYTHON not found; create the dev venv first (bash scripts/test.sh does)" >&2
    exit 2
fi
for tool in ansible-test ansible-doc antsibull-changelog; do
    if [[ ! -x "$BIN/$tool" ]]; then
        echo "sanity.sh: $BIN/$tool not found; install requirements-dev.txt into the dev venv" >&2
        exit 2
    fi
done

# --- 1. the pip bootstrap stand-in ---------------------------------------------------------------
# The pip version ansible-test pins for its venvs, read from ansible-test itself.
PIP_VERSION="$("$PYTHON" - <<'EOF'
import re
from pathlib import Path

import ansible_test

source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
match = re.search(r"default_packages = dict\(\s*pip='([0-9.]+)'", source.read_text())
print(match.group(1) if match else "24.2")
EOF
)"
CACHE="${HOME}/.ansible/test/cache"
SHIM="$CACHE/get_pip_${PIP_VERSION//./_}.py"
mkdir -p "$CACHE"
cat > "$SHIM.new" <<'EOF'
"""Stand-in for get-pip.py, written by s2-fleet's scripts/sanity.sh.

ansible-test runs it as `python get_pip.py [--disable-pip-version-check] pip==X [--no-setuptools]
[--no-wheel]` inside a venv made with --without-pip: install pip with the interpreter's ensurepip,
then the requested pip from the package index.
"""
import subprocess
import sys

SKIP = ('--no-setuptools', '--no-wheel', '--disable-pip-version-check')


def main():
    requested = [arg for arg in sys.argv[1:] if arg not in SKIP]
    subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'], stdout=subprocess.DEVNULL)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check']
    if requested:
        subprocess.check_call(pip + ['install', '--quiet'] + requested)
    if '--no-setuptools' in sys.argv:
        subprocess.call(pip + ['uninstall', '--quiet', '--yes', 'setuptools'])


if __name__ == '__main__':
    main()
EOF
mv -f "$SHIM.new" "$SHIM"
"$PYTHON" -c 'import ensurepip' || { echo "sanity.sh: $PYTHON has no ensurepip (apt-get install python3-venv)" >&2; exit 2; }

PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
export LC_ALL=C.UTF-8
export ANSIBLE_COLLECTIONS_PATH="$ROOT/collections"

status=0

# --- 2. ansible-test sanity ------------------------------------------------------------------------
echo "== ansible-test sanity (Python $PY_VERSION, pip bootstrap from $SHIM)"
if ! (cd "$COLLECTION" && "$BIN/ansible-test" sanity --venv --python "$PY_VERSION" --color no "$@"); then
    status=1
fi

# --- 3. ansible-doc renders every module -----------------------------------------------------------
for module in s2.fleet.bridge_conversation s2.fleet.bridge_lead s2.fleet.fleet_status_info; do
    echo "== ansible-doc $module"
    out="$(cd "$ROOT" && "$BIN/ansible-doc" "$module" 2>&1)" || { echo "$out"; status=1; continue; }
    for section in OPTIONS ATTRIBUTES EXAMPLES "RETURN VALUES"; do
        if ! grep -q "$section" <<<"$out"; then
            echo "ansible-doc $module: no $section section"
            status=1
        fi
    done
    if ! (cd "$ROOT" && "$BIN/ansible-doc" --json "$module") | "$PYTHON" -c '
import json, sys
doc = json.load(sys.stdin)
[(name, entry)] = doc.items()
assert entry["doc"]["options"], name + ": no options"
assert entry["return"], name + ": no return values"
assert entry["examples"].strip(), name + ": no examples"
'; then
        status=1
    fi
done

# --- 4. changelog fragments --------------------------------------------------------------------------
echo "== antsibull-changelog lint"
(cd "$COLLECTION" && "$BIN/antsibull-changelog" lint) || status=1

if [[ $status -eq 0 ]]; then
    echo "sanity.sh: all passed"
else
    echo "sanity.sh: FAILED (see above)" >&2
fi
exit $status
