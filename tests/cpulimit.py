"""A CPU quota on a child cgroup of our own, for processes that must fall behind on purpose.

cgroup v1 (`/sys/fs/cgroup/cpu/`, `cpu.cfs_quota_us` over `cpu.cfs_period_us`) where the cpu
controller is mounted that way, cgroup v2 (`cpu.max`) otherwise. A child joins the group
before it execs (`preexec`), so every thread it starts is limited from its first instruction.
`unavailable()` says why neither can be used here (not root, no cpu controller).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
PERIOD_US = 100_000


def _v2_root() -> Path | None:
    for root in V2_ROOTS:
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return root
    return None


def unavailable() -> str:
    """"" when a CpuLimit can be made here, else what is missing on this machine."""
    if (V1_CPU / "cpu.cfs_quota_us").exists():
        return "" if os.access(V1_CPU, os.W_OK) else f"{V1_CPU} is not writable (not root)"
    root = _v2_root()
    if root is None:
        return "no cgroup cpu controller: neither v1 cpu.cfs_quota_us nor v2 cpu.max"
    return "" if os.access(root, os.W_OK) else f"{root} is not writable (not root)"


# The largest weights the kernel takes: v1 cpu.shares (kernel/sched/sched.h MAX_SHARES,
# 1 << 18) and v2 cpu.weight (Documentation/admin-guide/cgroup-v2.rst: [1, 10000]).
V1_MAX_SHARES = 262_144
V2_MAX_WEIGHT = 10_000


class CpuLimit:
    """A cgroup whose members share at most `cores` CPUs' worth of time (changeable live).

    `favoured`: the group also gets the largest scheduling weight, so what else runs on the
    machine (two busy loops at nice 0, say) does not take the time the quota leaves it: with
    the quota lifted, the group's members get the CPU they need, however busy the machine is.
    """

    def __init__(self, name: str, cores: float | None, *, favoured: bool = False) -> None:
        if (V1_CPU / "cpu.cfs_quota_us").exists():
            self.kind = "cgroup v1 cpu.cfs_quota_us"
            self.path = V1_CPU / name
        else:
            root = _v2_root()
            if root is None:
                raise RuntimeError(unavailable())
            self.kind = "cgroup v2 cpu.max"
            self.path = root / name
        self.path.mkdir(exist_ok=True)
        if self.kind.startswith("cgroup v1"):
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        if favoured:
            if self.kind.startswith("cgroup v1"):
                (self.path / "cpu.shares").write_text(str(V1_MAX_SHARES))
            else:
                (self.path / "cpu.weight").write_text(str(V2_MAX_WEIGHT))
        self.set(cores)

    def __repr__(self) -> str:
        return f"<CpuLimit {self.kind} {self.path}>"

    def set(self, cores: float | None) -> None:
        """Limit the group to `cores` CPUs' worth of time; None lifts the limit."""
        quota = -1 if cores is None else max(1000, round(cores * PERIOD_US))
        if self.kind.startswith("cgroup v1"):
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")

    def times_throttled(self) -> int:
        """How many CFS periods the group was stopped in for having used its quota."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        raise RuntimeError(f"no nr_throttled in {self.path / 'cpu.stat'}")

    def preexec(self) -> None:
        """For subprocess.Popen(preexec_fn=...): the child joins the group before exec."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        """Remove the group (its members must have exited)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()

    def __enter__(self) -> CpuLimit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
