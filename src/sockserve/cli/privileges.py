"""``--user`` and ``--group``: bind as root (low ports, protected paths), then serve as
someone else. Names are resolved before anything is bound, so a typo costs nothing; the
switch happens after binding and before serving (and before any worker is forked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigurationError


@dataclass(frozen=True)
class Identity:
    """Who to become: ``uid`` and ``gid`` (None: keep), and the names they came from."""

    uid: int | None
    gid: int | None
    description: str

    def is_change(self) -> bool:
        return (self.uid is not None and self.uid != os.geteuid()) or (
            self.gid is not None and self.gid != os.getegid()
        )


def resolve(user: str | None, group: str | None) -> Identity | None:
    """Look the names up (numbers are taken as ids); refuse what cannot work."""
    if user is None and group is None:
        return None
    import grp
    import pwd

    uid = gid = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise ConfigurationError(f"--user {user}: no such user") from None
        uid, gid = entry.pw_uid, entry.pw_gid  # the user's own group unless --group
    if group is not None:
        try:
            gid = (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
        except KeyError:
            raise ConfigurationError(f"--group {group}: no such group") from None
    identity = Identity(
        uid, gid, " ".join(f"{k} {v}" for k, v in (("--user", user), ("--group", group)) if v)
    )
    if identity.is_change() and os.geteuid() != 0:
        raise ConfigurationError(
            f"{identity.description}: only root can switch to another user or group "
            f"(running as uid {os.geteuid()})"
        )
    return identity


def switch_to(identity: Identity) -> None:
    """Become ``identity``: supplementary groups, then group, then user (that order,
    because once the user changes the rest is no longer permitted)."""
    if not identity.is_change():
        return
    if identity.gid is not None:
        os.setgroups([identity.gid])
        os.setgid(identity.gid)
    if identity.uid is not None:
        os.setuid(identity.uid)
