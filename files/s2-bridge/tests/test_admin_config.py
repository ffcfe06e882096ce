"""The admin client's config (watchdog, status, admin): admin.toml plus its drop-ins,
`admin.d/*.toml` beside it, read in name order; each may add keys or tables, none may set one
another file already sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from s2_bridge.contract.config import load_admin_config
from s2_bridge.contract.errors import ConfigError

ADMIN = 'bridge_url = "http://127.0.0.1:9/mcp"\nadmin_token_file = "/var/lib/s2-bridge/admin.token"\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_without_an_admin_d_directory_admin_toml_is_the_whole_config(tmp_path: Path) -> None:
    config = load_admin_config(str(write(tmp_path / "admin.toml", ADMIN)))
    assert config.bridge_url == "http://127.0.0.1:9/mcp"
    assert config.watchdog.interval_s == 15.0


def test_a_drop_in_adds_the_watchdog_table(tmp_path: Path) -> None:
    admin = write(tmp_path / "admin.toml", ADMIN)
    write(tmp_path / "admin.d" / "watchdog.toml", "[watchdog]\ninterval_s = 5\ngrace_s = 0\n")
    write(tmp_path / "admin.d" / "notes.txt", "not TOML, not read")
    config = load_admin_config(str(admin))
    assert (config.watchdog.interval_s, config.watchdog.grace_s, config.watchdog.threshold_s) == (5.0, 0.0, 45.0)
    assert config.admin_token_file == "/var/lib/s2-bridge/admin.token"


def test_drop_ins_may_also_add_top_level_keys(tmp_path: Path) -> None:
    admin = write(tmp_path / "admin.toml", 'admin_token_file = "/t"\n')
    write(tmp_path / "admin.d" / "10-url.toml", 'bridge_url = "http://127.0.0.1:9/mcp"\n')
    assert load_admin_config(str(admin)).bridge_url == "http://127.0.0.1:9/mcp"


@pytest.mark.parametrize(
    ("first", "second", "key"),
    [
        ("admin.toml", "admin.d/watchdog.toml", "watchdog"),
        ("admin.d/10-a.toml", "admin.d/20-b.toml", "watchdog"),
        ("admin.toml", "admin.d/url.toml", "bridge_url"),
    ],
)
def test_a_key_set_twice_is_refused_naming_both_files(tmp_path: Path, first: str, second: str, key: str) -> None:
    admin = write(tmp_path / "admin.toml", ADMIN)
    setting = "[watchdog]\ninterval_s = 5\n" if key == "watchdog" else 'bridge_url = "http://127.0.0.1:8/mcp"\n'
    if first != "admin.toml":
        write(tmp_path / first, setting)
    elif key == "watchdog":
        admin.write_text(ADMIN + setting)
    write(tmp_path / second, setting)
    with pytest.raises(ConfigError) as caught:
        load_admin_config(str(admin))
    message = str(caught.value)
    assert caught.value.path == str(tmp_path / second)
    assert caught.value.field == key
    assert str(tmp_path / first) in message and str(tmp_path / second) in message
    assert "fix:" in message


def test_bad_toml_in_a_drop_in_names_that_file(tmp_path: Path) -> None:
    admin = write(tmp_path / "admin.toml", ADMIN)
    bad = write(tmp_path / "admin.d" / "watchdog.toml", "[watchdog\ninterval_s = 5\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_admin_config(str(admin))
    assert caught.value.path == str(bad)


def test_a_bad_value_in_a_drop_in_names_that_file(tmp_path: Path) -> None:
    admin = write(tmp_path / "admin.toml", ADMIN)
    drop_in = write(tmp_path / "admin.d" / "watchdog.toml", "[watchdog]\ninterval_s = -1\n")
    with pytest.raises(ConfigError, match="greater than 0") as caught:
        load_admin_config(str(admin))
    assert (caught.value.path, caught.value.field) == (str(drop_in), "watchdog.interval_s")
