"""The containers themselves: what every later test relies on.

Runs against every inventory host as podman://NAME (see conftest.py).
"""

from __future__ import annotations

import ipaddress


def test_hostname_is_the_inventory_name(host, host_name):
    assert host.check_output("hostname") == host_name


def test_pid1_is_systemd_where_the_platform_says_so(host, runs_systemd):
    pid1 = host.file("/proc/1/comm").content_string.strip()
    booted = host.file("/run/systemd/system").is_directory
    if runs_systemd:
        assert pid1 == "systemd"
        assert booted, "/run/systemd/system is missing although systemd is PID 1"
    else:
        assert pid1 != "systemd"
        # the roles detect systemd by this path (docs/DESIGN: WSL without systemd)
        assert not booted, "/run/systemd/system exists in a container without systemd"


def test_systemd_is_running_with_no_failed_units(host, runs_systemd):
    if not runs_systemd:
        return
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert state == "running", f"systemd state {state!r}; failed units:\n{failed}"


def test_sandboxed_units_are_really_sandboxed(host, runs_systemd):
    """ProtectSystem/PrivateTmp/ProtectHome must take effect, not be skipped.

    Without CAP_SYS_ADMIN systemd in a container starts such a unit anyway and silently drops
    the sandbox; this check fails in that case.
    """
    if not runs_systemd:
        return
    host.run_expect([0], "touch /tmp/s2-outside-marker")
    probe = (
        "systemd-run --wait --pipe --quiet"
        " -p ProtectSystem=strict -p PrivateTmp=yes -p ProtectHome=yes -p NoNewPrivileges=yes"
        " /bin/sh -c 'test ! -e /tmp/s2-outside-marker && ! touch /etc/s2-probe 2>/dev/null"
        ' && test -z "$(ls -A /root)" && echo sandboxed\''
    )
    result = host.run(probe)
    assert result.rc == 0 and result.stdout.strip() == "sandboxed", (
        f"sandbox not applied (rc {result.rc}): {result.stdout} {result.stderr}"
    )
    assert not host.file("/etc/s2-probe").exists


def _ipv4_addresses(h) -> set[str]:
    out = h.check_output("ip -4 -o addr show scope global")
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def test_workers_resolve_the_orchestrator(host, in_group, get_lab_host, orch_name):
    if not in_group("workers"):
        return
    answer = host.run(f"getent hosts {orch_name}")
    assert answer.rc == 0, f"a worker cannot resolve '{orch_name}' (network DNS, aardvark-dns)"
    address = answer.stdout.split()[0]
    ipaddress.ip_address(address)
    assert address in _ipv4_addresses(get_lab_host(orch_name)), (
        f"'{orch_name}' resolves to {address}, which is not the orchestrator container"
    )
    # and Python (what the runtime uses) agrees with getent
    py = host.check_output(f"python3 -c \"import socket; print(socket.gethostbyname('{orch_name}'))\"")
    assert py == address


def test_ansible_reaches_the_host_at_its_static_address_over_ssh(host, host_name, inventory):
    """The inventory's ansible_host is this container's address, and sshd serves on it."""
    hostvars = inventory["hostvars"][host_name]
    if hostvars.get("ansible_connection", "ssh") not in ("ssh", "ansible.builtin.ssh"):
        return
    assert hostvars["ansible_host"] in _ipv4_addresses(host)
    assert host.socket("tcp://0.0.0.0:22").is_listening
