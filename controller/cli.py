"""The `vigil` command line. Heavy imports stay inside the commands so `--help` is quick."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EX_CONFIG = 78  # sysexits.h: the systemd unit does not restart on this


def _check_config(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config

    try:
        loaded = load_config(args.file or args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    cfg = loaded.config
    print(
        f"{loaded.source}: valid; camera {cfg.camera.backend} "
        f"{cfg.camera.width}x{cfg.camera.height}@{cfg.camera.fps:g}, "
        f"recording to {cfg.recording.root} in {cfg.recording.segment_seconds:g}s segments"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from controller import daemon
    from controller.config import ConfigError

    try:
        return daemon.run(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG


def _diagram(args: argparse.Namespace) -> int:
    from states.machine import mermaid

    sys.stdout.write(mermaid())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil", description="Crash-safe recorder daemon for headless camera units."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE",
                       help="config file (default: $VIGIL_CONFIG, /boot/firmware/vigil.yaml, "
                            "/etc/vigil/vigil.yaml, built-in defaults)")

    with_config(command("run", "record until SIGTERM/SIGINT", _run))
    check = command("check-config", "validate a config file; exit 78 when it is invalid",
                    _check_config)
    check.add_argument("file", nargs="?", help="the file to check (default: the search order)")
    with_config(check)
    command("diagram", "print the state machine as a mermaid diagram", _diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
