"""s2.fleet.bridge_conversation against the real bridge on loopback.

Most tests call the module's core function `converge` with a real AdminBridge; the last ones
run the module through `ansible` itself (AnsiballZ, respawn into the runtime python, no_log).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import pwd
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.s2.fleet.plugins.module_utils.runtime import AdminBridge, Failure, read_admin_config
from conftest import assert_no_token, module_args, write_admin_config
from ansible_collections.s2.fleet.plugins.modules.bridge_conversation import converge, credentials_path
from s2_bridge.contract.credentials import FIELDS, load_credentials
from s2_bridge.contract.tokens import TOKEN_RE


def run(bridge, params, check_mode=False, **overrides):
    """converge() as the module runs it; returns its result."""
    return run_secrets(bridge, params, check_mode=check_mode, **overrides)[0]


def run_secrets(bridge, params, check_mode=False, **overrides):
    """converge() as the module runs it; returns (result, secrets the module was told about)."""
    secrets: set[str] = set()
    merged = {**params, **overrides}
    client = bridge.admin()
    secrets.update(client.secrets)
    result = converge(merged, client.call, check_mode=check_mode, on_secret=secrets.add)
    return result, secrets


def read_file(params) -> dict:
    return json.loads(Path(credentials_path(params["credentials_dir"], params["worker_id"])).read_text())


def test_contract_fields_match_contracts_md():
    contracts = Path(__file__).resolve().parents[8] / "docs" / "CONTRACTS.md"
    if contracts.is_file():  # the repo checkout: the file format example lists exactly these fields
        text = contracts.read_text()
        example = text[text.index('{"conversation_id"') :]
        example = json.loads(example[: example.index("}") + 1].replace("...", ""))
        assert set(example) == set(FIELDS)


def test_present_creates_then_is_idempotent(bridge, params):
    first, secrets = run_secrets(bridge, params)
    assert first["changed"] is True
    assert first["action"] == "created"
    path = Path(first["credentials_path"])
    assert path == Path(params["credentials_dir"]) / f"s2-worker-{params['worker_id']}-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    data = read_file(params)
    assert tuple(data) == FIELDS
    assert data["conversation_id"] == first["conversation_id"]
    assert data["worker_id"] == params["worker_id"]
    assert data["worker_role"] == "tests"
    assert data["coordinator_token"].startswith("s2c_")
    assert data["worker_token"].startswith("s2w_")
    # the orchestrator's copy names the bridge as admin.toml does (here plain http on loopback: no CA)
    assert data["bridge_url"] == bridge.url
    assert data["ca_file"] == ""
    assert data["expires_at"] == first["expires_at"]
    # the module registered both new tokens as no_log values
    assert {data["coordinator_token"], data["worker_token"]} <= secrets
    # the bridge has exactly this conversation, and both tokens work
    listed = bridge.conversations(params["worker_id"])
    assert [c["conversation_id"] for c in listed] == [first["conversation_id"]]
    assert listed[0]["coordinator_role"] == "s2-orchestrator"
    assert bridge.token_works(data["worker_token"])
    assert bridge.token_works(data["coordinator_token"])

    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    second = run(bridge, params)
    assert second["changed"] is False
    assert second["action"] == "unchanged"
    assert second["conversation_id"] == first["conversation_id"]
    assert second["revoked_conversation_ids"] == []
    assert second["diff"]["before"] == second["diff"]["after"]
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert_no_token(bridge, first, secrets)
    assert_no_token(bridge, second, secrets)


def test_check_mode_creates_nothing(bridge, params):
    result = run(bridge, params, check_mode=True)
    assert result["changed"] is True
    assert result["action"] == "created"
    assert result["conversation_id"] is None
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"]["worker_role"] == "tests"
    assert not Path(params["credentials_dir"]).exists()
    assert bridge.conversations(params["worker_id"], include_revoked=True) == []


def test_check_mode_does_not_rotate(bridge, params):
    created, secrets = run_secrets(bridge, params, ttl_s=3600, min_lifetime_s=60)
    path = Path(created["credentials_path"])
    before = path.read_bytes()
    old = read_file(params)

    planned = run(bridge, params, check_mode=True, min_lifetime_s=7200)
    assert planned["changed"] is True
    assert planned["action"] == "rotated"
    assert planned["conversation_id"] == created["conversation_id"]
    assert planned["diff"]["before"]["expires_at"] == created["expires_at"]
    assert planned["diff"]["after"]["expires_at"] > created["expires_at"]
    assert path.read_bytes() == before
    assert bridge.token_works(old["worker_token"])
    [listed] = bridge.conversations(params["worker_id"])
    assert listed["expires_at"] == created["expires_at"]
    assert_no_token(bridge, planned, secrets)


def test_check_mode_on_converged_worker_reports_no_change(bridge, params):
    run(bridge, params)
    result = run(bridge, params, check_mode=True)
    assert result["changed"] is False
    assert result["action"] == "unchanged"


def test_rotates_when_too_little_life_is_left(bridge, params):
    created = run(bridge, params, ttl_s=3600, min_lifetime_s=60)
    old = read_file(params)
    assert created["action"] == "created"

    # 3600 s left < 7200 s wanted: rotate (same conversation, new tokens, fresh lifetime)
    rotated, secrets = run_secrets(bridge, params, min_lifetime_s=7200)
    assert rotated["changed"] is True
    assert rotated["action"] == "rotated"
    assert rotated["conversation_id"] == created["conversation_id"]
    assert rotated["expires_at"] > created["expires_at"]
    new = read_file(params)
    assert new["conversation_id"] == old["conversation_id"]
    assert new["worker_token"] != old["worker_token"]
    assert new["coordinator_token"] != old["coordinator_token"]
    assert new["expires_at"] == rotated["expires_at"]
    assert stat.S_IMODE(Path(rotated["credentials_path"]).stat().st_mode) == 0o600
    # the bridge refuses the old tokens and serves the new ones
    assert not bridge.token_works(old["worker_token"])
    assert not bridge.token_works(old["coordinator_token"])
    assert bridge.token_works(new["worker_token"])
    assert rotated["diff"]["before"]["expires_at"] == created["expires_at"]
    assert rotated["diff"]["after"]["expires_at"] == rotated["expires_at"]
    assert_no_token(bridge, rotated, secrets, {old["worker_token"], old["coordinator_token"]})

    # now plenty of life is left: nothing to do
    again = run(bridge, params, min_lifetime_s=7200)
    assert again["changed"] is False


def test_state_rotated_always_rotates_and_creates_when_missing(bridge, params):
    created = run(bridge, params, state="rotated")
    assert created["action"] == "created"
    first = read_file(params)

    rotated, secrets = run_secrets(bridge, params, state="rotated")
    assert rotated["changed"] is True
    assert rotated["action"] == "rotated"
    assert rotated["conversation_id"] == created["conversation_id"]
    second = read_file(params)
    assert second["worker_token"] != first["worker_token"]
    assert not bridge.token_works(first["worker_token"])
    assert bridge.token_works(second["worker_token"])
    assert_no_token(bridge, rotated, secrets)


def test_absent_revokes_and_removes_the_file(bridge, params):
    created = run(bridge, params)
    data = read_file(params)
    path = Path(created["credentials_path"])

    planned = run(bridge, params, check_mode=True, state="absent")
    assert planned["changed"] is True
    assert planned["action"] == "revoked"
    assert path.exists()
    assert bridge.token_works(data["worker_token"])

    gone, secrets = run_secrets(bridge, params, state="absent", partner_role=None)
    assert gone["changed"] is True
    assert gone["action"] == "revoked"
    assert gone["conversation_id"] == created["conversation_id"]
    assert gone["revoked_conversation_ids"] == [created["conversation_id"]]
    assert gone["diff"]["after"] == {}
    assert gone["diff"]["before"]["conversation_id"] == created["conversation_id"]
    assert not path.exists()
    assert bridge.conversations(params["worker_id"]) == []
    [revoked] = bridge.conversations(params["worker_id"], include_revoked=True)
    assert revoked["revoked"] is True
    assert not bridge.token_works(data["worker_token"])
    assert_no_token(bridge, gone, secrets)

    again = run(bridge, params, state="absent")
    assert again["changed"] is False
    assert again["action"] == "absent"


def test_lost_file_rotates_the_live_conversation_instead_of_orphaning_it(bridge, params):
    created = run(bridge, params)
    old = read_file(params)
    Path(created["credentials_path"]).unlink()

    result = run(bridge, params)
    assert result["action"] == "rotated"
    assert result["conversation_id"] == created["conversation_id"]
    assert [c["conversation_id"] for c in bridge.conversations(params["worker_id"])] == [created["conversation_id"]]
    assert not bridge.token_works(old["worker_token"])
    assert bridge.token_works(read_file(params)["worker_token"])


def test_stale_file_from_a_lost_rotation_is_rotated(bridge, params):
    created = run(bridge, params)
    stale = read_file(params)
    # someone rotated on the bridge and the new file never landed: the file's tokens are dead
    bridge.admin().call("rotate_conversation", {"conversation_id": created["conversation_id"], "ttl_s": 2592000 + 60})
    assert not bridge.token_works(stale["worker_token"])

    result = run(bridge, params)
    assert result["action"] == "rotated"
    fresh = read_file(params)
    assert bridge.token_works(fresh["worker_token"])
    assert fresh["expires_at"] == bridge.conversations(params["worker_id"])[0]["expires_at"]


def test_role_change_replaces_the_conversation(bridge, params):
    created = run(bridge, params)
    old = read_file(params)
    replaced = run(bridge, params, partner_role="frontend")
    assert replaced["action"] == "created"
    assert replaced["conversation_id"] != created["conversation_id"]
    assert replaced["revoked_conversation_ids"] == [created["conversation_id"]]
    assert replaced["worker_role"] == "frontend"
    [live] = bridge.conversations(params["worker_id"])
    assert live["conversation_id"] == replaced["conversation_id"]
    assert live["worker_role"] == "frontend"
    assert read_file(params)["worker_role"] == "frontend"
    assert not bridge.token_works(old["worker_token"])


def test_settings_change_rewrites_the_file_with_the_same_tokens(bridge, params):
    run(bridge, params)
    old = read_file(params)
    # admin.toml now names another URL and CA (flow.run puts them in the parameters)
    result = run(bridge, params, ca_file="/srv/ca.pem", bridge_url=bridge.url + "/")
    # the trailing slash changes the URL the copy names; the bridge answers both
    assert result["changed"] is True
    assert result["action"] == "updated"
    new = read_file(params)
    assert new["ca_file"] == "/srv/ca.pem"
    assert new["bridge_url"] == bridge.url + "/"
    assert new["worker_token"] == old["worker_token"]
    assert bridge.token_works(new["worker_token"])


def test_loose_permissions_are_fixed(bridge, params):
    created = run(bridge, params)
    path = Path(created["credentials_path"])
    path.chmod(0o644)
    path.parent.chmod(0o755)
    result = run(bridge, params)
    assert result["changed"] is True
    assert result["action"] == "updated"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_and_group(bridge, params):
    nobody = pwd.getpwnam("nobody")
    result = run(bridge, params, owner="nobody", group=str(nobody.pw_gid))
    st = Path(result["credentials_path"]).stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert Path(params["credentials_dir"]).stat().st_uid == nobody.pw_uid
    again = run(bridge, params, owner="nobody", group=str(nobody.pw_gid))
    assert again["changed"] is False
    # a different owner is a change, and is applied
    changed = run(bridge, params, owner="root", group="0")
    assert changed["action"] == "updated"
    assert Path(result["credentials_path"]).stat().st_uid == 0


def test_unknown_owner_is_a_clear_error(bridge, params):
    with pytest.raises(Failure, match="no-such-user-s2: no such user"):
        run(bridge, params, owner="no-such-user-s2")


def test_symlinked_credentials_file_is_replaced_not_followed(bridge, params, tmp_path):
    created = run(bridge, params)
    path = Path(created["credentials_path"])
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    victim.chmod(0o644)
    path.unlink()
    path.symlink_to(victim)
    result = run(bridge, params)
    assert result["changed"] is True
    assert not path.is_symlink()
    assert victim.read_text() == "keep me"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert bridge.token_works(read_file(params)["worker_token"])


def test_expired_conversation_is_rotated(bridge, params):
    created = run(bridge, params, ttl_s=3600, min_lifetime_s=60)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)  # past its expiry
    client = bridge.admin()
    result = converge({**params, "min_lifetime_s": 60}, client.call, now=later)
    assert result["action"] == "rotated"
    assert result["conversation_id"] == created["conversation_id"]


def test_parallel_runs_for_the_whole_fleet(tmp_path, params, bridge_factory):
    """Eight workers provisioned at once (forks), sharing one admin token and the production rate limits."""
    fleet = bridge_factory("fleet", limits={"calls_per_s": 20, "calls_burst": 60})
    base = {
        **params,
        "admin_config": fleet.admin_config,
        "bridge_url": fleet.url,
        "credentials_dir": str(tmp_path / "fleet-credentials"),
    }

    def provision(n: int) -> dict:
        return converge({**base, "worker_id": str(n), "partner_role": f"role-{n}"}, fleet.admin().call)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(provision, range(1, 9)))
    assert [r["action"] for r in results] == ["created"] * 8
    files = sorted(p.name for p in (tmp_path / "fleet-credentials").iterdir())
    assert files == sorted(f"s2-worker-{n}-credentials.json" for n in range(1, 9))
    status = fleet.admin().call("fleet_status", {})
    assert sorted(w["worker_id"] for w in status["workers"]) == [str(n) for n in range(1, 9)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        again = list(pool.map(provision, range(1, 9)))
    assert [r["changed"] for r in again] == [False] * 8


# --- errors: clear, structured, never a token --------------------------------------------------


def test_missing_admin_token_file(params, tmp_path):
    config = write_admin_config(tmp_path / "admin.toml", params["bridge_url"], str(tmp_path / "nope.token"))
    with pytest.raises(Failure) as info:
        AdminBridge.from_admin_config(read_admin_config(config))
    assert info.value.code == "admin_token_file"
    assert "nope.token" in str(info.value)
    assert "s2-bridge.service" in info.value.fix


def test_refused_admin_token_names_the_bridge_error(bridge, params, tmp_path):
    fake = "s2a_" + "A" * 43
    token_file = tmp_path / "admin.token"
    token_file.write_text(fake + "\n")
    token_file.chmod(0o600)
    config = write_admin_config(tmp_path / "admin.toml", bridge.url, str(token_file))
    client = AdminBridge.from_admin_config(read_admin_config(config))
    with pytest.raises(Failure) as info:
        converge({**params, "admin_config": config}, client.call)
    assert info.value.code == "unauthenticated"
    assert info.value.field == "admin_token_file"
    assert fake not in str(info.value)
    assert fake not in json.dumps(info.value.to_dict())
    assert not Path(params["credentials_dir"]).exists()


def test_bridge_tool_error_is_structured(bridge):
    with pytest.raises(Failure) as info:
        bridge.admin().call("rotate_conversation", {"conversation_id": "conv_0000000000000000"})
    assert info.value.code == "not_found"
    assert info.value.field == "conversation_id"
    assert info.value.tool == "rotate_conversation"
    assert info.value.fix


def test_rate_limited_calls_are_retried(bridge_factory):
    slow = bridge_factory("slow", limits={"calls_per_s": 5, "calls_burst": 3})
    client = slow.admin()
    started = time.monotonic()
    for _attempt in range(4):
        assert client.call("list_conversations", {}) == {"conversations": [], "lead": None}
    # more calls than the burst allows went through, so some of them waited for the bucket
    assert time.monotonic() - started >= 1.0


def test_unreachable_bridge(bridge, params):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = AdminBridge(f"http://127.0.0.1:{port}/mcp", bridge.admin_token, timeout_s=5)
    with pytest.raises(Failure) as info:
        client.call("list_conversations", {})
    assert info.value.code == "unreachable"
    assert bridge.admin_token not in str(info.value)


def test_tls_with_the_fleet_ca(tls_bridge, params):
    tls_params = {
        **params,
        "admin_config": tls_bridge.admin_config,
        "bridge_url": tls_bridge.url,
        "ca_file": tls_bridge.ca_file,
    }
    result = run(tls_bridge, tls_params)
    assert result["action"] == "created"
    assert read_file(tls_params)["ca_file"] == tls_bridge.ca_file
    assert tls_bridge.token_works(read_file(tls_params)["worker_token"])

    wrong = AdminBridge(tls_bridge.url, tls_bridge.admin_token, ca_file=tls_bridge.extra["other_ca_file"])
    with pytest.raises(Failure) as info:
        wrong.call("list_conversations", {})
    assert info.value.code == "unreachable"
    assert "TLS failure" in info.value.message
    assert "ca_file" in info.value.fix

    with pytest.raises(Failure) as info:
        AdminBridge(tls_bridge.url, tls_bridge.admin_token, ca_file=str(Path(tls_bridge.ca_file).parent / "none.crt"))
    assert info.value.code == info.value.field == "ca_file"


# --- through ansible itself ---------------------------------------------------------------------


def test_module_entry_point_check_diff_idempotence_and_no_token_in_output(bridge, params, ansible_module):
    args = module_args(params)
    checked = ansible_module("bridge_conversation", args, extra_args=("--check", "--diff", "-vvv"))
    assert checked.rc == 0, checked.stdout + checked.stderr
    assert checked.result["changed"] is True
    assert checked.result["action"] == "created"
    assert not Path(params["credentials_dir"]).exists()
    assert bridge.conversations(params["worker_id"]) == []

    created = ansible_module("bridge_conversation", args, extra_args=("--diff", "-vvv"))
    assert created.rc == 0, created.stdout + created.stderr
    assert created.result["changed"] is True
    assert created.result["action"] == "created"
    assert created.result["diff"]["after"]["conversation_id"] == created.result["conversation_id"]
    data = read_file(params)
    assert stat.S_IMODE(Path(created.result["credentials_path"]).stat().st_mode) == 0o600

    again = ansible_module("bridge_conversation", args, extra_args=("-vvv",))
    assert again.rc == 0, again.stdout + again.stderr
    assert again.result["changed"] is False

    for out in (checked, created, again):
        text = out.stdout + out.stderr
        for secret in (data["worker_token"], data["coordinator_token"], bridge.admin_token):
            assert secret not in text
        assert not TOKEN_RE.search(text)


def test_module_respawns_into_runtime_python(bridge, params, ansible_module):
    """Under a Python without s2_bridge (the system one), the module re-runs itself under runtime_python."""
    system_python = "/usr/bin/python3"
    if not Path(system_python).exists() or os.system(f"{system_python} -c 'import s2_bridge' 2>/dev/null") == 0:
        pytest.skip("needs a system python without s2_bridge")
    out = ansible_module("bridge_conversation", module_args(params), interpreter=system_python)
    assert out.rc == 0, out.stdout + out.stderr
    assert out.result["action"] == "created"
    assert bridge.token_works(read_file(params)["worker_token"])

    missing = ansible_module(
        "bridge_conversation",
        module_args(params, runtime_python="/nonexistent/venv/bin/python"),
        interpreter=system_python,
    )
    assert missing.rc != 0
    assert "localhost | FAILED!" in missing.stdout
    assert "/nonexistent/venv/bin/python" in missing.result["msg"]
    assert "s2_bridge (the s2-bridge runtime venv)" in missing.result["msg"]


def test_module_failure_is_structured_and_token_free(bridge, params, ansible_module, tmp_path):
    fake = "s2a_" + "B" * 43
    token_file = tmp_path / "wrong.token"
    token_file.write_text(fake)
    token_file.chmod(0o600)
    config = write_admin_config(tmp_path / "wrong-admin.toml", bridge.url, str(token_file))
    out = ansible_module("bridge_conversation", module_args(params, admin_config=config), extra_args=("-vvv",))
    assert out.rc != 0
    assert "localhost | FAILED!" in out.stdout
    assert out.result["error"]["code"] == "unauthenticated"
    assert fake not in out.stdout + out.stderr


def test_orchestrator_copy_is_valid_on_the_orchestrator(tls_bridge, tmp_path, worker_id, ansible_module):
    """The orchestrator's copy, written with nothing but admin_config (no URL or CA given), is a credentials file
    the runtime's own reader accepts where it lives: the bridge URL and CA file of admin.toml, a CA that exists
    there (not the workers' /etc/s2-fleet/ca.crt), and its coordinator token works against that URL."""
    credentials_dir = tmp_path / "orchestrator-credentials"
    args = {
        "admin_config": tls_bridge.admin_config,
        "runtime_python": sys.executable,
        "worker_id": worker_id,
        "partner_role": "tests",
        "credentials_dir": str(credentials_dir),
    }
    out = ansible_module("bridge_conversation", args)
    assert out.rc == 0, out.stdout + out.stderr
    assert out.result["action"] == "created"

    path = out.result["credentials_path"]
    loaded = load_credentials(path)  # refuses a CA file that does not exist (exit 78 in the runtime's commands)
    assert loaded.bridge_url == tls_bridge.url
    assert loaded.ca_file == tls_bridge.ca_file
    assert loaded.conversation_id == out.result["conversation_id"]
    coordinator = AdminBridge(loaded.bridge_url, loaded.coordinator_token, ca_file=loaded.ca_file, source=path)
    assert coordinator.call("check_partner_status", {})["partner_role"] == "tests"

    again = ansible_module("bridge_conversation", args)
    assert again.rc == 0, again.stdout + again.stderr
    assert again.result["changed"] is False


def test_bad_admin_config_is_named(bridge, params, tmp_path, ansible_module):
    """admin_config is read by the runtime's load_admin_config: its checks, the file and the key named."""
    missing = ansible_module("bridge_conversation", module_args(params, admin_config=str(tmp_path / "none.toml")))
    assert missing.rc != 0
    assert missing.result["error"]["code"] == "admin_config"
    assert "none.toml" in missing.result["msg"]
    assert "file not found" in missing.result["msg"]

    no_ca = write_admin_config(
        tmp_path / "admin.toml", "https://127.0.0.1:1/mcp", bridge.admin_token_file, str(tmp_path / "no-ca.crt")
    )
    out = ansible_module("bridge_conversation", module_args(params, admin_config=no_ca))
    assert out.rc != 0
    assert out.result["error"]["code"] == "admin_config"
    assert "ca_file" in out.result["msg"] and "no-ca.crt does not exist" in out.result["msg"]
    assert not Path(params["credentials_dir"]).exists()
