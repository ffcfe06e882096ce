"""The default host paths have one home (s2_bridge.contract.paths); the roles' copy in
roles/_common/defaults/main.yml and the modules' admin_config default must say the same."""

from __future__ import annotations

from pathlib import Path

import yaml
from s2_bridge.contract import paths

COLLECTION = Path(__file__).resolve().parents[3] / "collections/ansible_collections/s2/fleet"
SHARED_DEFAULTS = COLLECTION / "roles/_common/defaults/main.yml"
MODULE_RUNTIME = COLLECTION / "plugins/module_utils/runtime.py"


def test_the_roles_install_where_the_runtime_looks() -> None:
    shared = yaml.safe_load(SHARED_DEFAULTS.read_text(encoding="utf-8"))
    assert shared["s2_fleet_config_dir"] == paths.CONFIG_DIR
    assert shared["s2_fleet_data_dir"] == paths.DATA_DIR
    assert shared["s2_fleet_install_dir"] == paths.INSTALL_DIR
    assert shared["s2_fleet_admin_config_file"] == "{{ s2_fleet_config_dir }}/admin.toml"
    assert f"{paths.CONFIG_DIR}/admin.toml" in MODULE_RUNTIME.read_text(encoding="utf-8")


def test_backups_go_where_the_runtime_documents_them() -> None:
    shared = yaml.safe_load(SHARED_DEFAULTS.read_text(encoding="utf-8"))
    assert shared["s2_fleet_backup_dir"] == paths.BACKUP_DIR
