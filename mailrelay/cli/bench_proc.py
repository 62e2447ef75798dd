"""What the benchmark reads from /proc: CPU seconds and resident memory of process trees.

A tree is a root process and its descendants. Its CPU is every member's user and system
time plus the root's reaped children (``cutime``/``cstime``): a PostgreSQL backend that
exits during a round has its time added to the postmaster's once it is reaped. Threads
are counted by their process. Only processes on this machine can be read; a service on
another host is left out, and the result says which parts it counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:  # gone, or not ours to read
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return raw[raw.rindex(")") + 2:].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    """``root`` and every process below it that is alive now."""
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, ()))
    return found


def cpu_seconds(root: int) -> float:
    """User and system CPU of the tree, reaped children included (0.0 if it is gone)."""
    total = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        total += int(fields[11]) + int(fields[12])
        if pid == root:
            total += int(fields[13]) + int(fields[14])
    return total / TICKS


def rss_mb(pid: int) -> float | None:
    try:
        pages = int((PROC / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * PAGE_KB / 1024


def max_rss_mb(root: int) -> float | None:
    """The largest resident set of one process in the tree, in MB."""
    sizes = [size for pid in descendants(root) if (size := rss_mb(pid)) is not None]
    return max(sizes) if sizes else None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


@dataclass
class CpuMeter:
    """The CPU of named process trees between ``start`` and ``stop``."""

    roots: dict[str, int]
    _at_start: dict[str, float] = field(default_factory=dict)
    parts: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.roots.items()}

    def start(self) -> None:
        self._at_start = self._read()

    def stop(self) -> float:
        """CPU seconds used since ``start``, all trees together; ``parts`` has each tree's."""
        now = self._read()
        self.parts = {name: now[name] - self._at_start[name] for name in now}
        return sum(self.parts.values())
