"""Run every benchmark and print its table: `python -m bench [NAME ...]`."""

from __future__ import annotations

import importlib
import sys

MODULES = [
    "validate", "merge", "passthrough", "throughput", "baseline", "overhead", "startup", "cpu", "memory",
    "api_memory", "export", "integrity", "live", "writes", "adaptive", "upload",
]


def main(argv: list[str]) -> int:
    names = argv or MODULES
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        module.main()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
