"""What a server process tree costs, read from /proc: CPU time, RSS, threads, processes.

The tree is the server's session: every server is started with ``start_new_session``, so
its forked children (and any they orphan) share its session id even after the kernel
re-parents them. Linux here lacks ``/proc/<pid>/task/<tid>/children``, which is why the
session id rather than a parent walk defines the tree.

CPU time of a process is ``utime + stime + cutime + cstime``: the last two hold every
child it has already reaped (and their reaped children), so a fork-per-connection server
that reaped 10,000 children still shows their work. Summing that over the live tree
counts each CPU-second once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class TreeSample:
    """One look at a process tree."""

    cpu_s: float
    rss_bytes: int
    threads: int
    processes: int


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # exited between listing /proc and reading it
    # The command name is in parentheses and may hold spaces: split after the last ")".
    return text[text.rfind(")") + 2 :].split()


def _rss_pages(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def sample_session(session_id: int) -> TreeSample:
    """Sum CPU, RSS, threads and processes over every process in ``session_id``."""
    ticks = rss_pages = threads = processes = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        # Fields after the name, 0-based: 0 state, 3 session, 11..14 utime stime cutime
        # cstime, 17 num_threads (proc(5) numbers them 3, 6, 14-17 and 20).
        if fields is None or int(fields[3]) != session_id:
            continue
        ticks += sum(int(value) for value in fields[11:15])
        threads += int(fields[17])
        processes += 1
        if fields[0] != "Z":
            rss_pages += _rss_pages(entry.name)
    return TreeSample(
        cpu_s=ticks / CLOCK_TICKS,
        rss_bytes=rss_pages * PAGE_BYTES,
        threads=threads,
        processes=processes,
    )


def busy_core_seconds(cores: set[int] | None) -> float:
    """CPU-seconds the given cores (all if None) spent not idle, from /proc/stat.

    Compared with the server's and the load generator's own CPU over the same window,
    it shows how much else ran on their cores: other processes, interrupts, a
    hypervisor's steal. That is the noise in a figure, measured rather than guessed.
    """
    busy_ticks = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            if cores is not None and int(name[3:]) not in cores:
                continue
            # user nice system idle iowait irq softirq steal: busy is all but idle, iowait.
            ticks = [int(value) for value in values[:8]]
            busy_ticks += sum(ticks) - ticks[3] - ticks[4]
    return busy_ticks / CLOCK_TICKS


@dataclass(frozen=True)
class ProcessSample:
    """One process of a server's session: CPU so far, threads, and its memory three ways.

    RSS counts every resident page the process maps, so forked workers that still share
    the master's pages count them again each; PSS divides each shared page among the
    processes sharing it (summed over a tree, it is the tree's real footprint); USS is
    the pages only this process maps: what the kernel frees when it exits, the honest
    cost of one more worker.
    """

    pid: int
    cpu_s: float
    threads: int
    rss_bytes: int
    pss_bytes: int
    uss_bytes: int


def _smaps_rollup(pid: str) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes by field name; empty if unreadable."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return found
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        words = rest.split()
        if len(words) == 2 and words[1] == "kB" and words[0].isdigit():
            found[name] = int(words[0]) * 1024
    return found


def session_processes(session_id: int) -> list[ProcessSample]:
    """Every live process of ``session_id``, by pid: the leader (lowest pid) first."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None or int(fields[3]) != session_id or fields[0] == "Z":
            continue
        memory = _smaps_rollup(entry.name)
        found.append(
            ProcessSample(
                pid=int(entry.name),
                cpu_s=sum(int(value) for value in fields[11:15]) / CLOCK_TICKS,
                threads=int(fields[17]),
                rss_bytes=memory.get("Rss", _rss_pages(entry.name) * PAGE_BYTES),
                pss_bytes=memory.get("Pss", 0),
                uss_bytes=memory.get("Private_Clean", 0) + memory.get("Private_Dirty", 0),
            )
        )
    return sorted(found, key=lambda sample: (sample.pid != session_id, sample.pid))
