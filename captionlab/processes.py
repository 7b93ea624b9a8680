"""What /proc says of a process: its state and group, and the live members of a group (Linux; no torch).

    proc_stat(pid)      # ("S", pgid), or None where there is no such process
    is_live(pid)        # exists and is neither a zombie nor dead
    group_members(pgid) # the group's live pids

One reader of /proc/<pid>/stat for the trainer's launcher, the evaluation jobs and the Slurm grid's local cells,
each of which had its own.
"""

from __future__ import annotations

import os
from pathlib import Path

GONE_STATES = ("Z", "X")  # a zombie (ended, not yet reaped) or dead process runs nothing


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name may contain spaces and parentheses
    return fields[0], int(fields[2])


def is_live(pid: int) -> bool:
    """Whether `pid` is a process that still runs (not a zombie)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in GONE_STATES


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in group `pgid`."""
    if not Path("/proc/self").exists():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in GONE_STATES:
                members.append(int(entry.name))
    return members
