"""What every benchmark prints: the machine, and figures side by side with their reference."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    return f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@dataclass(frozen=True)
class Figure:
    """Repeated measurements of one thing: median, min and max."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def show(self, fmt: str) -> str:
        return f"{self.median:{fmt}} ({min(self.samples):{fmt}}..{max(self.samples):{fmt}})"


def repeat(measure: Callable[[], float], runs: int) -> Figure:
    return Figure(tuple(measure() for _ in range(runs)))


def table(title: str, unit: str, rows: Sequence[tuple[str, Figure, Figure, str]], fmt: str = ".2f") -> str:
    """One block: each row is (what, vigil, reference, target), with their ratio."""
    header = f"{'measure':<34} {'vigil ' + unit:>28} {'reference ' + unit:>28} {'ratio':>7}  target"
    lines = [f"== {title}", machine_line(), "figures: median (min..max)", header]
    for what, ours, ref, target in rows:
        ratio = ours.median / ref.median if ref.median else float("nan")
        lines.append(f"{what:<34} {ours.show(fmt):>28} {ref.show(fmt):>28} {ratio:>7.3f}  {target}")
    return "\n".join(lines)
