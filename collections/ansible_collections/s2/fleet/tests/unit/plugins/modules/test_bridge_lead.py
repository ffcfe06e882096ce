"""s2.fleet.bridge_lead against the real bridge on loopback.

A bridge holds at most one lead token: the tests of this file share one bridge (module_bridge) and
begin by rotating its lead, except those that need a bridge without a lead (fresh_bridge). They
call the module's core function `converge` with a real BridgeClient; the last ones run the module
through `ansible` itself (AnsiballZ, check and diff mode, no_log).
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import stat
import sys
from pathlib import Path

import pytest
from ansible_collections.s2.fleet.plugins.module_utils.runtime import Failure
from conftest import assert_no_token, module_args, write_admin_config
from ansible_collections.s2.fleet.plugins.modules.bridge_lead import converge
from s2_bridge.contract.credentials import LEAD_FIELDS
from s2_bridge.contract.tokens import TOKEN_RE


@pytest.fixture
def lead_params(module_bridge, tmp_path: Path) -> dict:
    """bridge_lead's parameters for the shared bridge, as main() hands them to converge()."""
    return lead_params_for(module_bridge, tmp_path)


@pytest.fixture
def empty_params(fresh_bridge, tmp_path: Path) -> dict:
    """bridge_lead's parameters for a bridge of its own, which has no lead yet."""
    return lead_params_for(fresh_bridge, tmp_path)


def lead_params_for(bridge, tmp_path: Path) -> dict:
    """The options, and bridge_url and ca_file as flow.run reads them from admin_config."""
    return {
        "admin_config": bridge.admin_config,
        "bridge_url": bridge.url,
        "ca_file": bridge.ca_file or "",
        "runtime_python": sys.executable,
        "timeout_s": 30.0,
        "path": str(tmp_path / "agent-home" / ".s2" / "s2-lead-credentials.json"),
        "lead_role": "s2-orchestrator",
        "ttl_s": 2592000,
        "min_lifetime_s": 604800,
        "state": "present",
        "owner": None,
        "group": None,
        "bridge_url_for_lead": bridge.url,
        "ca_file_for_lead": bridge.ca_file or "",
    }


def run(bridge, params, check_mode=False, now=None, **overrides):
    """converge() as the module runs it; returns its result."""
    return run_secrets(bridge, params, check_mode=check_mode, now=now, **overrides)[0]


def run_secrets(bridge, params, check_mode=False, now=None, **overrides):
    """converge() as the module runs it; returns (result, secrets the module was told about)."""
    secrets: set[str] = set()
    client = bridge.admin()
    secrets.update(client.secrets)
    result = converge({**params, **overrides}, client.call, check_mode=check_mode, on_secret=secrets.add, now=now)
    return result, secrets


def start(bridge, params, **overrides):
    """Give the shared bridge a new lead and write its file, whatever an earlier test left."""
    result = run(bridge, params, state="rotated", **overrides)
    assert result["action"] in ("created", "rotated")
    return result


def read_file(params) -> dict:
    return json.loads(Path(params["path"]).read_text())


def live_lead(bridge):
    return bridge.admin().call("list_conversations", {})["lead"]


def lead_token_works(bridge, token: str) -> bool:
    return bridge.token_works(token, tool="heartbeat")  # a lead has no partner to check


def test_lead_fields_match_contracts_md():
    contracts = Path(__file__).resolve().parents[8] / "docs" / "CONTRACTS.md"
    if contracts.is_file():  # the repo checkout: the lead file example lists exactly these fields, in order
        text = contracts.read_text()
        example = text[text.index('{"lead_role"') :]
        example = json.loads(example[: example.index("}") + 1])
        assert tuple(example) == LEAD_FIELDS


def test_present_creates_then_is_idempotent(fresh_bridge, empty_params):
    first, secrets = run_secrets(fresh_bridge, empty_params)
    assert first["changed"] is True
    assert first["action"] == "created"
    path = Path(first["path"])
    assert str(path) == empty_params["path"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    data = read_file(empty_params)
    assert tuple(data) == LEAD_FIELDS
    assert data["lead_role"] == "s2-orchestrator"
    assert data["lead_token"].startswith("s2l_")
    assert data["bridge_url"] == fresh_bridge.url
    assert data["ca_file"] == ""
    assert data["expires_at"] == first["expires_at"]
    assert data["lead_token"] in secrets  # registered as a no_log value
    lead = live_lead(fresh_bridge)
    assert lead == {"lead_role": "s2-orchestrator", "created_at": data["created_at"], "expires_at": data["expires_at"]}
    assert lead_token_works(fresh_bridge, data["lead_token"])

    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    second, secrets2 = run_secrets(fresh_bridge, empty_params)
    assert second["changed"] is False
    assert second["action"] == "unchanged"
    assert second["lead_role"] == "s2-orchestrator"
    assert second["expires_at"] == first["expires_at"]
    assert second["diff"]["before"] == second["diff"]["after"]
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert data["lead_token"] in secrets2  # the token read from the file is registered too
    assert_no_token(fresh_bridge, first, secrets)
    assert_no_token(fresh_bridge, second, secrets2)


def test_the_runtime_accepts_the_file(module_bridge, lead_params):
    """The file is what the runtime's own reader (mcp-proxy, hook, check-messages) accepts as a lead file."""
    credentials = pytest.importorskip("s2_bridge.contract.credentials")
    start(module_bridge, lead_params)
    loaded = credentials.load_credentials(lead_params["path"])
    assert loaded.side == "lead"
    assert loaded.token == read_file(lead_params)["lead_token"]
    assert loaded.bridge_url == module_bridge.url


def test_check_mode_creates_nothing(fresh_bridge, empty_params):
    result = run(fresh_bridge, empty_params, check_mode=True)
    assert result["changed"] is True
    assert result["action"] == "created"
    assert result["lead_role"] == "s2-orchestrator"
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"]["path"] == empty_params["path"]
    assert not Path(empty_params["path"]).exists()
    assert not Path(empty_params["path"]).parent.exists()
    assert live_lead(fresh_bridge) is None


def test_check_mode_does_not_rotate(module_bridge, lead_params):
    created = start(module_bridge, lead_params, ttl_s=3600, min_lifetime_s=60)
    before = Path(lead_params["path"]).read_bytes()
    old = read_file(lead_params)

    planned, secrets = run_secrets(module_bridge, lead_params, check_mode=True, min_lifetime_s=7200)
    assert planned["changed"] is True
    assert planned["action"] == "rotated"
    assert planned["diff"]["before"]["expires_at"] == created["expires_at"]
    assert planned["expires_at"] > created["expires_at"]
    assert Path(lead_params["path"]).read_bytes() == before
    assert lead_token_works(module_bridge, old["lead_token"])
    assert live_lead(module_bridge)["expires_at"] == created["expires_at"]
    assert_no_token(module_bridge, planned, secrets)


def test_check_mode_on_a_converged_lead_reports_no_change(module_bridge, lead_params):
    start(module_bridge, lead_params)
    result = run(module_bridge, lead_params, check_mode=True)
    assert result["changed"] is False
    assert result["action"] == "unchanged"


def test_rotates_when_too_little_life_is_left(module_bridge, lead_params):
    created = start(module_bridge, lead_params, ttl_s=3600, min_lifetime_s=60)
    old = read_file(lead_params)

    rotated, secrets = run_secrets(module_bridge, lead_params, min_lifetime_s=7200)
    assert rotated["changed"] is True
    assert rotated["action"] == "rotated"
    assert rotated["expires_at"] > created["expires_at"]
    new = read_file(lead_params)
    assert new["lead_token"] != old["lead_token"]
    assert new["expires_at"] == rotated["expires_at"] == live_lead(module_bridge)["expires_at"]
    assert not lead_token_works(module_bridge, old["lead_token"])
    assert lead_token_works(module_bridge, new["lead_token"])
    assert rotated["diff"]["before"]["expires_at"] == created["expires_at"]
    assert rotated["diff"]["after"]["expires_at"] == rotated["expires_at"]
    assert_no_token(module_bridge, rotated, secrets, {old["lead_token"]})

    again = run(module_bridge, lead_params, min_lifetime_s=7200)
    assert again["changed"] is False


def test_expired_lead_is_rotated(module_bridge, lead_params):
    start(module_bridge, lead_params, ttl_s=3600, min_lifetime_s=60)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)  # past its expiry
    result = run(module_bridge, lead_params, min_lifetime_s=60, now=later)
    assert result["action"] == "rotated"


def test_state_rotated_always_rotates(module_bridge, lead_params):
    start(module_bridge, lead_params)
    first = read_file(lead_params)

    rotated, secrets = run_secrets(module_bridge, lead_params, state="rotated")
    assert rotated["changed"] is True
    assert rotated["action"] == "rotated"
    second = read_file(lead_params)
    assert second["lead_token"] != first["lead_token"]
    assert not lead_token_works(module_bridge, first["lead_token"])
    assert lead_token_works(module_bridge, second["lead_token"])
    assert_no_token(module_bridge, rotated, secrets, {first["lead_token"]})


def test_lost_file_rotates(module_bridge, lead_params):
    start(module_bridge, lead_params)
    old = read_file(lead_params)
    Path(lead_params["path"]).unlink()

    result = run(module_bridge, lead_params)
    assert result["action"] == "rotated"
    assert not lead_token_works(module_bridge, old["lead_token"])
    assert lead_token_works(module_bridge, read_file(lead_params)["lead_token"])


def test_unparsable_file_is_replaced(module_bridge, lead_params):
    start(module_bridge, lead_params)
    Path(lead_params["path"]).write_text("{not json")
    result = run(module_bridge, lead_params)
    assert result["action"] == "rotated"
    assert lead_token_works(module_bridge, read_file(lead_params)["lead_token"])


def test_stale_file_from_a_lost_rotation_is_rotated(module_bridge, lead_params):
    start(module_bridge, lead_params)
    stale = read_file(lead_params)
    # someone rotated on the bridge and the new file never landed: the file's token is dead
    module_bridge.admin().call("rotate_lead", {"lead_role": "s2-orchestrator", "ttl_s": 2592000 + 60})
    assert not lead_token_works(module_bridge, stale["lead_token"])

    result = run(module_bridge, lead_params)
    assert result["action"] == "rotated"
    fresh = read_file(lead_params)
    assert lead_token_works(module_bridge, fresh["lead_token"])
    assert fresh["expires_at"] == live_lead(module_bridge)["expires_at"]


def test_role_change_rotates_into_the_new_role(module_bridge, lead_params):
    start(module_bridge, lead_params)
    old = read_file(lead_params)
    result = run(module_bridge, lead_params, lead_role="fleet-lead")
    assert result["action"] == "rotated"
    assert result["lead_role"] == "fleet-lead"
    assert live_lead(module_bridge)["lead_role"] == "fleet-lead"
    assert read_file(lead_params)["lead_role"] == "fleet-lead"
    assert not lead_token_works(module_bridge, old["lead_token"])


def test_settings_change_rewrites_the_file_with_the_same_token(module_bridge, lead_params, tmp_path):
    start(module_bridge, lead_params)
    old = read_file(lead_params)
    ca = tmp_path / "ca.pem"
    result, secrets = run_secrets(
        module_bridge, lead_params, bridge_url_for_lead=module_bridge.url + "/", ca_file_for_lead=str(ca)
    )
    assert result["changed"] is True
    assert result["action"] == "updated"
    new = read_file(lead_params)
    assert tuple(new) == LEAD_FIELDS
    assert new["bridge_url"] == module_bridge.url + "/"
    assert new["ca_file"] == str(ca)
    assert new["lead_token"] == old["lead_token"]
    assert lead_token_works(module_bridge, new["lead_token"])
    assert_no_token(module_bridge, result, secrets)


def test_unknown_fields_and_loose_permissions_are_fixed(module_bridge, lead_params):
    start(module_bridge, lead_params)
    path = Path(lead_params["path"])
    data = read_file(lead_params)
    path.write_text(json.dumps({**data, "note": "added by hand"}))
    path.chmod(0o644)
    result = run(module_bridge, lead_params)
    assert result["action"] == "updated"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_file(lead_params) == data


def test_existing_directory_is_left_alone(module_bridge, lead_params):
    directory = Path(lead_params["path"]).parent
    directory.mkdir(parents=True, mode=0o750)
    directory.chmod(0o750)
    start(module_bridge, lead_params)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750


def test_symlinked_file_is_replaced_not_followed(module_bridge, lead_params, tmp_path):
    start(module_bridge, lead_params)
    path = Path(lead_params["path"])
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    victim.chmod(0o644)
    path.unlink()
    path.symlink_to(victim)
    result = run(module_bridge, lead_params)
    assert result["changed"] is True
    assert not path.is_symlink()
    assert victim.read_text() == "keep me"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert lead_token_works(module_bridge, read_file(lead_params)["lead_token"])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_and_group(module_bridge, lead_params):
    nobody = pwd.getpwnam("nobody")
    result = start(module_bridge, lead_params, owner="nobody", group=str(nobody.pw_gid))
    st = Path(result["path"]).stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert Path(lead_params["path"]).parent.stat().st_uid == nobody.pw_uid  # the directory it created
    again = run(module_bridge, lead_params, owner="nobody", group=str(nobody.pw_gid))
    assert again["changed"] is False
    changed = run(module_bridge, lead_params, owner="root", group="0")
    assert changed["action"] == "updated"
    assert Path(result["path"]).stat().st_uid == 0


def test_unknown_owner_is_a_clear_error(module_bridge, lead_params):
    with pytest.raises(Failure, match="no-such-user-s2: no such user"):
        run(module_bridge, lead_params, owner="no-such-user-s2")
    assert not Path(lead_params["path"]).exists()


def test_failed_write_after_rotation_says_so(module_bridge, lead_params, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    params = {**lead_params, "path": str(blocker / "s2-lead-credentials.json")}
    with pytest.raises(Failure) as info:
        run(module_bridge, params)
    assert info.value.changed is True
    assert "rotate_lead issued a new lead token" in str(info.value)
    assert "run again" in str(info.value)
    assert not TOKEN_RE.search(str(info.value))
    assert live_lead(module_bridge) is not None


def test_a_bridge_without_the_lead_is_named(lead_params):
    def old_bridge(tool, arguments):
        assert tool == "list_conversations"
        return {"conversations": []}

    with pytest.raises(Failure) as info:
        converge(lead_params, old_bridge)
    assert info.value.code == "bad_result"
    assert "upgrade the s2-bridge runtime" in info.value.fix
    assert not Path(lead_params["path"]).exists()


def test_tls_with_the_fleet_ca(tls_bridge, tmp_path):
    params = lead_params_for(tls_bridge, tmp_path)
    assert params["ca_file_for_lead"] == tls_bridge.ca_file
    result = run(tls_bridge, params, state="rotated")
    assert result["action"] in ("created", "rotated")
    data = read_file(params)
    assert data["ca_file"] == tls_bridge.ca_file
    assert lead_token_works(tls_bridge, data["lead_token"])


# --- through ansible itself ---------------------------------------------------------------------


def test_module_entry_point_check_diff_idempotence_and_no_token_in_output(fresh_bridge, empty_params, ansible_module):
    args = module_args(empty_params)
    checked = ansible_module("bridge_lead", args, extra_args=("--check", "--diff", "-vvv"))
    assert checked.rc == 0, checked.stdout + checked.stderr
    assert checked.result["changed"] is True
    assert checked.result["action"] == "created"
    assert not Path(empty_params["path"]).exists()
    assert live_lead(fresh_bridge) is None

    created = ansible_module("bridge_lead", args, extra_args=("--diff", "-vvv"))
    assert created.rc == 0, created.stdout + created.stderr
    assert created.result["changed"] is True
    assert created.result["action"] == "created"
    assert created.result["path"] == empty_params["path"]
    assert created.result["diff"]["after"]["expires_at"] == created.result["expires_at"]
    data = read_file(empty_params)
    assert stat.S_IMODE(Path(empty_params["path"]).stat().st_mode) == 0o600

    again = ansible_module("bridge_lead", args, extra_args=("-vvv",))
    assert again.rc == 0, again.stdout + again.stderr
    assert again.result["changed"] is False

    rotated = ansible_module("bridge_lead", {**args, "state": "rotated"}, extra_args=("--diff", "-vvv"))
    assert rotated.rc == 0, rotated.stdout + rotated.stderr
    assert rotated.result["action"] == "rotated"
    new = read_file(empty_params)

    for out in (checked, created, again, rotated):
        text = out.stdout + out.stderr
        for secret in (data["lead_token"], new["lead_token"], fresh_bridge.admin_token):
            assert secret not in text
        assert not TOKEN_RE.search(text)


def test_module_defaults_the_file_to_the_admin_url_and_ca(tls_bridge, tmp_path, ansible_module):
    params = lead_params_for(tls_bridge, tmp_path)
    args = module_args(params)
    del args["bridge_url_for_lead"], args["ca_file_for_lead"]
    assert set(args).isdisjoint({"bridge_url", "ca_file", "ca_path", "admin_token_file"})  # admin_config only
    out = ansible_module("bridge_lead", {**args, "state": "rotated"})
    assert out.rc == 0, out.stdout + out.stderr
    data = read_file(params)
    assert data["bridge_url"] == tls_bridge.url
    assert data["ca_file"] == tls_bridge.ca_file


def test_module_refuses_an_https_file_without_a_ca(tls_bridge, tmp_path, ansible_module):
    params = lead_params_for(tls_bridge, tmp_path)
    args = module_args(params, ca_file_for_lead=str(tmp_path / "no-such-ca.crt"))
    out = ansible_module("bridge_lead", args)
    assert out.rc != 0
    assert "ca_file_for_lead" in out.result["msg"]
    assert "exit 78" in out.result["msg"]
    assert not Path(params["path"]).exists()


def test_module_validates_its_arguments(module_bridge, lead_params, ansible_module):
    out = ansible_module("bridge_lead", module_args(lead_params, lead_role="x"))
    assert out.rc != 0
    assert "lead_role 'x'" in out.result["msg"]
    out = ansible_module("bridge_lead", module_args(lead_params, min_lifetime_s=2592000))
    assert out.rc != 0
    assert "min_lifetime_s" in out.result["msg"]
    assert not Path(lead_params["path"]).exists()


def test_module_failure_is_structured_and_token_free(module_bridge, lead_params, ansible_module, tmp_path):
    fake = "s2a_" + "C" * 43
    token_file = tmp_path / "wrong.token"
    token_file.write_text(fake)
    token_file.chmod(0o600)
    config = write_admin_config(tmp_path / "wrong-admin.toml", module_bridge.url, str(token_file))
    out = ansible_module("bridge_lead", module_args(lead_params, admin_config=config), extra_args=("-vvv",))
    assert out.rc != 0
    assert "localhost | FAILED!" in out.stdout
    assert out.result["error"]["code"] == "unauthenticated"
    assert fake not in out.stdout + out.stderr
