# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)
"""PRIVATE to the s2.fleet collection: the flow bridge_conversation and bridge_lead share.

Not a public API: other collections must not import it; it may change in any release.

Both modules read a credentials file, ask the bridge (as the admin) what is live, decide, call
the bridge, and write the file with the runtime's one atomic 0600 writer
(``s2_bridge.contract.credentials.write_private_json``) under the wanted owner.  This file holds the
options, checks, file handling and the module run (main) they share; each module keeps only its
own plan and its own converge().  No file content ever goes into a message: errors name paths,
users and groups only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import grp
import json
import os
import pwd
import stat
import tempfile

from ansible_collections.s2.fleet.plugins.module_utils.runtime import (
    BRIDGE_ARGUMENT_SPEC,
    Failure,
    connect,
    ensure_runtime,
    fail,
    read_admin_config,
)

# The runtime's contract; the modules use these through this file (flow.FIELDS, ...).
try:
    from s2_bridge.contract.credentials import FIELDS, LEAD_FIELDS  # pylint: disable=unused-import
    from s2_bridge.contract.credentials import credentials_document  # pylint: disable=unused-import
    from s2_bridge.contract.credentials import write_private_json
    from s2_bridge.contract.errors import ConfigError
    from s2_bridge.contract.ids import WORKER_ID_FIX, is_worker_id  # pylint: disable=unused-import
    from s2_bridge.contract.tokens import PATTERNS  # pylint: disable=unused-import
except ImportError:  # run() re-runs the module under the runtime venv's python (ensure_runtime) before any use
    FIELDS = LEAD_FIELDS = PATTERNS = WORKER_ID_FIX = None
    credentials_document = write_private_json = is_worker_id = ConfigError = None

FILE_MODE = 0o600
DIR_MODE = 0o700
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)

# Options both modules share beside the bridge's (doc fragment s2.fleet.bridge.credentials).
CREDENTIALS_ARGUMENT_SPEC = dict(
    BRIDGE_ARGUMENT_SPEC,
    ttl_s={"type": "int", "default": 2592000},
    min_lifetime_s={"type": "int", "default": 604800},
    owner={"type": "str"},
    group={"type": "str"},
)


def argument_spec(**own):
    """The shared options plus a module's own."""
    return dict(CREDENTIALS_ARGUMENT_SPEC, **own)


def utcnow():
    return datetime.datetime.now(UTC)


def parse_time(value):
    """Aware datetime from ISO 8601 text (Z or an offset; naive means UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def iso(moment):
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def resolve_ids(owner, group):
    """(uid, gid) for chown; -1 leaves that id alone."""
    uid = gid = -1
    if owner:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise Failure("credentials_file", "owner %s: no such user on this host" % owner, field="owner") from None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise Failure("credentials_file", "group %s: no such group on this host" % group, field="group") from None
    return uid, gid


def read_json_object(path):
    """The JSON object in path when it is a regular file (not a symlink) that parses, else None."""
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    try:
        with open(path, "r") as f:
            data = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _owned_as_wanted(st, uid, gid):
    return (uid == -1 or st.st_uid == uid) and (gid == -1 or st.st_gid == gid)


def file_needs_fix(path, uid, gid):
    """True when path is not a regular 0600 file with the wanted owner and group."""
    try:
        st = os.lstat(path)
    except OSError:
        return True
    return not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != FILE_MODE or not _owned_as_wanted(st, uid, gid)


def directory_needs_fix(path, uid, gid):
    try:
        st = os.stat(path)
    except OSError:
        return True
    return (st.st_mode & 0o7777) != DIR_MODE or not _owned_as_wanted(st, uid, gid)


def ensure_directory(path, uid, gid, enforce=True):
    """Create path 0700 (owned as wanted) when missing; with enforce, bring an existing one to that too."""
    if not os.path.isdir(path):
        os.makedirs(path, DIR_MODE, exist_ok=True)  # several runs may race to create it
        enforce = True
    if not enforce:
        return
    st = os.stat(path)
    if (st.st_mode & 0o7777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    if not _owned_as_wanted(st, uid, gid):
        os.chown(path, uid, gid)


def write_file(path, document, uid, gid):
    """Write document to path with the runtime's atomic 0600 writer, owned by uid:gid from its first moment there.

    With an owner or group to set, the document is written under a fresh name in the same directory, chowned,
    then renamed onto path, so a reader never sees the new file with the wrong owner.  A symlink at path is
    replaced, never followed.
    """
    try:
        if uid == -1 and gid == -1:
            write_private_json(path, document)
            return
        fd, staged = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".new", dir=os.path.dirname(path))
        os.close(fd)
        try:
            write_private_json(staged, document)
            os.chown(staged, uid, gid)
            os.replace(staged, path)
        except BaseException:
            if os.path.lexists(staged):
                os.unlink(staged)
            raise
    except ConfigError as exc:
        raise OSError("%s: %s" % (exc.path, exc.problem)) from None


def tokens_of(data, names):
    """The non-empty string values of data under names (the tokens a module registers as no_log values)."""
    return [data[name] for name in names if data and isinstance(data.get(name), str) and data[name]]


def check_lifetimes(params):
    """The message for ttl_s and min_lifetime_s that do not fit together, else None."""
    if params["ttl_s"] <= 0:
        return "ttl_s must be positive"
    if params["min_lifetime_s"] < 0 or (params["state"] == "present" and params["min_lifetime_s"] >= params["ttl_s"]):
        return "min_lifetime_s must be between 0 and ttl_s (%s), or every run would rotate" % params["ttl_s"]
    return None


def run(module, converge, prepare=None, file_label="credentials file"):
    """A module's whole run: re-run in the runtime venv, check, converge, report.

    Before prepare, params gets bridge_url and ca_file (empty for an http:// URL) of the module's admin_config,
    read with the runtime's load_admin_config: the bridge as the orchestrator reaches it, which is what the
    orchestrator's own files (its copy of each worker's credentials, the lead's file) must name.
    prepare(params) -> message or None: the module's own argument checks (and defaults it resolves).
    converge(params, call, check_mode, on_secret) -> the result plus a 'diff' key; it raises Failure.
    """
    params = module.params
    ensure_runtime(module)
    try:
        config = read_admin_config(params["admin_config"])
    except Failure as err:
        fail(module, err)
    params.update(bridge_url=config.bridge_url, ca_file=config.ca_file or "")
    problem = (prepare(params) if prepare else None) or check_lifetimes(params)
    if problem:
        module.fail_json(msg=problem)
    try:
        bridge = connect(module, config)
        result = converge(params, bridge.call, check_mode=module.check_mode, on_secret=module.no_log_values.add)
    except Failure as err:
        fail(module, err)
    except (IOError, OSError) as err:
        fail(module, Failure("credentials_file", "%s: %s" % (file_label, err)))
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)
