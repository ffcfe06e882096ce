# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)
"""The credentials files the s2.fleet modules write: times, owners, and one atomic 0600 writer.

Shared by bridge_conversation (a worker's conversation, the orchestrator's copy) and bridge_lead
(the lead's file).  Nothing here talks to the bridge, and nothing here ever puts a file's content
into a message: errors name paths, users and groups only.
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

FILE_MODE = 0o600
DIR_MODE = 0o700
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


class CredentialsError(Exception):
    """A failure the module reports as is; changed tells whether the bridge or a file was modified first."""

    def __init__(self, msg, changed=False):
        super(CredentialsError, self).__init__(msg)
        self.changed = changed


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
            raise CredentialsError("owner %s: no such user on this host" % owner) from None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise CredentialsError("group %s: no such group on this host" % group) from None
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


def ensure_directory(path, uid, gid):
    """Create path 0700 when missing and bring an existing one to 0700 and the wanted owner."""
    if not os.path.isdir(path):
        os.makedirs(path, DIR_MODE, exist_ok=True)  # several runs may race to create it
    st = os.stat(path)
    if (st.st_mode & 0o7777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    if not _owned_as_wanted(st, uid, gid):
        os.chown(path, uid, gid)


def write_json_atomic(path, content, uid, gid):
    """Write content as JSON to path atomically: a 0600 temporary file in the same directory, then rename.

    A symlink at path is replaced, never followed.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, FILE_MODE)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(content, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
