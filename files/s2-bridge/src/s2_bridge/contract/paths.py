"""The default host paths: where the runtime looks when a config file does not say otherwise, and
what the collection's roles install to (`roles/_common/defaults/main.yml`: s2_fleet_config_dir,
s2_fleet_data_dir, s2_fleet_install_dir; the backup playbook's directory). Plain strings, no
imports: every part of the runtime may read them."""

from __future__ import annotations

from typing import Final

CONFIG_DIR: Final = "/etc/s2-bridge"  # bridge.toml, admin.toml (+ admin.d/), tls/
DATA_DIR: Final = "/var/lib/s2-bridge"  # the database and the admin token
INSTALL_DIR: Final = "/opt/s2-bridge"  # venv/, bin/, log/
BACKUP_DIR: Final = "/var/backups/s2-bridge"  # playbooks/backup.yml's snapshots

BRIDGE_DB: Final = f"{DATA_DIR}/bridge.db"  # [storage] path
ADMIN_TOKEN_FILE: Final = f"{DATA_DIR}/admin.token"  # [auth] admin_token_file
