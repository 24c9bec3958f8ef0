"""The `vigil` command line. Heavy imports stay inside the commands so `--help` is quick."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from controller.config import ApiConfig, VigilConfig
    from hw.integrity import Signer

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


def _mqtt_remove_discovery(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config
    from controller.surfaces.mqtt import remove_discovery

    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    done, what = remove_discovery(loaded.config)
    print(what, file=sys.stdout if done else sys.stderr)
    return 0 if done else 1


# `vigil status` follows the LSB convention for init-script status actions: 0 running (and
# recording), 3 not running, 4 unknown; 1 (LSB: "dead, pid file exists") is used for
# "running but not recording". 78 (EX_CONFIG) when the config cannot be read.
EXIT_NOT_RECORDING = 1
EXIT_NOT_RUNNING = 3
EXIT_STATUS_UNKNOWN = 4
EXIT_UNREACHABLE = 2  # reset: the daemon could not be reached


def _is_not_running(err: BaseException) -> bool:
    """True when nothing listens at the address (refused, no such socket): the daemon is down."""
    cause: BaseException | None = err
    while cause is not None:
        reason = getattr(cause, "reason", None)
        if isinstance(cause, ConnectionRefusedError | FileNotFoundError) or \
                isinstance(reason, ConnectionRefusedError | FileNotFoundError):
            return True
        cause = cause.__cause__
    return False


def _api_settings(args: argparse.Namespace) -> tuple[str, ApiConfig | None] | int:
    """(API URL, the config's api section or None), or EX_CONFIG after printing why."""
    from controller.client import base_url
    from controller.config import ConfigError, load_config

    if args.url and not getattr(args, "needs_config", False):
        return args.url, None
    try:
        api = load_config(args.config).config.api
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    return args.url or base_url(api.listen), api


def _status(args: argparse.Namespace) -> int:
    import json

    from controller.client import DaemonClient, DaemonUnreachable, format_status

    settings = _api_settings(args)
    if isinstance(settings, int):
        return settings
    url, _ = settings
    try:
        reply = DaemonClient(url).status()
    except DaemonUnreachable as err:
        if _is_not_running(err):
            print(f"vigil status: {err} (is `vigil run` running, with api.enabled: true?)",
                  file=sys.stderr)
            return EXIT_NOT_RUNNING
        print(f"vigil status: {err} (something is there but did not answer)", file=sys.stderr)
        return EXIT_STATUS_UNKNOWN
    if reply.status != 200 or not isinstance(reply.body, dict):
        print(f"vigil status: {url}/status answered {reply.status}: {reply.detail}", file=sys.stderr)
        return EXIT_STATUS_UNKNOWN
    if args.json:
        print(json.dumps(reply.body, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_status(reply.body))
    return 0 if reply.body.get("state") == "recording" else EXIT_NOT_RECORDING


def _reset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from controller.client import DaemonClient, DaemonUnreachable, read_token

    args.needs_config = args.token_file is None
    settings = _api_settings(args)
    if isinstance(settings, int):
        return settings
    url, api = settings
    token_file = Path(args.token_file) if args.token_file or api is None else api.token_file
    try:
        token = read_token(token_file)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        print(f"vigil reset: cannot read the API token from {token_file}: {reason}", file=sys.stderr)
        return 1
    try:
        reply = DaemonClient(url).action("reset", token)
    except DaemonUnreachable as err:
        print(f"vigil reset: {err} (is `vigil run` running, with api.enabled: true?)",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status == 200 and body.get("done"):
        print(f"reset done: state {body.get('state')}")
        for step in body.get("transitions") or []:
            print(f"  {step}")
        if body.get("refused"):
            print(f"  autostart refused: {body['refused']}")
        return 0
    print(f"vigil reset: {url}/actions/reset answered {reply.status}: {reply.detail}", file=sys.stderr)
    return 1


EXIT_NOT_MERGED = 1
EXIT_USAGE = 2


EXIT_UNVERIFIED = 1


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from controller.verify import verify

    key = args.key
    if key is not None and Path(key).is_file():
        key = Path(key).read_text().strip()
    if key is not None and (len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key)):
        print("vigil verify: --key: give the public key as `vigil key` prints it (64 hex digits), "
              "or a file holding it", file=sys.stderr)
        return EXIT_USAGE
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"vigil verify: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    from controller.surfaces.export import parse_time

    bounds: dict[str, float | None] = {"since": None, "until": None}
    for name in bounds:
        text = getattr(args, name)
        if text is not None:
            try:
                bounds[name] = parse_time(text)
            except ValueError as err:
                print(f"vigil verify: --{name}: {err}", file=sys.stderr)
                return EXIT_USAGE
    since, until = bounds["since"], bounds["until"]
    if since is not None and until is not None and until <= since:
        print("vigil verify: --until must be after --since", file=sys.stderr)
        return EXIT_USAGE
    report = verify([Path(p) for p in args.paths], key=key, since=since, until=until)
    for finding in report.findings:
        print(finding.describe())
    for note in report.notes:
        print(f"note: {note}")
    verdict = "OK" if report.is_ok else ("NOTHING TO VERIFY" if report.files == 0 else "FAILED")
    print(f"{verdict}: {report.files} file(s), {report.fragments} fragment(s), "
          f"{len(report.findings)} problem(s)")
    return 0 if report.is_ok else EXIT_UNVERIFIED


def _key(args: argparse.Namespace) -> int:
    from pathlib import Path

    from controller.config import ConfigError, load_config
    from controller.keys import KeyError_, key_path, load_key, load_or_create_key, public_hex

    if args.key_file is not None:
        path = Path(args.key_file)
    else:
        try:
            cfg = load_config(args.config).config
        except ConfigError as err:
            print(err, file=sys.stderr)
            return EX_CONFIG
        path = key_path(cfg.integrity.key_file)
    try:
        key = load_or_create_key(path) if args.create else load_key(path)
    except KeyError_ as err:
        print(f"vigil key: {err}", file=sys.stderr)
        return 1
    print(public_hex(key))
    return 0


def _merge(args: argparse.Namespace) -> int:
    import shutil
    import time
    from pathlib import Path

    from controller.config import ConfigError, VigilConfig, load_config
    from controller.storage.merge import HourStillOpen, MergeError, NothingToMerge, force_merge
    from controller.storage.retention import RetentionPolicy
    from hw.footage import parse_hour

    hour = None
    if args.hour is not None:
        try:
            hour = parse_hour(args.hour)
        except ValueError as err:
            print(f"vigil merge: --hour: {err}", file=sys.stderr)
            return EXIT_USAGE
    try:
        # --root alone needs no config file: the built-in defaults give the verify mode and reserve.
        cfg = VigilConfig() if args.root and not args.config else load_config(args.config).config
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    rec, storage = cfg.recording, cfg.storage
    roots = [Path(args.root)] if args.root else [Path(rec.root), *map(Path, rec.fallback_roots)]
    if not any(root.is_dir() for root in roots):
        print(f"vigil merge: no recording root found ({', '.join(map(str, roots))})", file=sys.stderr)
        return EXIT_NOT_MERGED
    policy = RetentionPolicy(storage.retention_days, storage.reserve_mb, storage.reserve_percent)
    try:
        merged = force_merge(roots, hour=hour, now=time.time(), verify=rec.merge_verify,
                             reserve_bytes=lambda root: policy.reserve_bytes(shutil.disk_usage(root).total))
    except (NothingToMerge, HourStillOpen) as err:
        print(f"vigil merge: {err}", file=sys.stderr)
        return EXIT_NOT_MERGED
    except MergeError as err:
        print(f"vigil merge: {err}; the segments are left as they were", file=sys.stderr)
        return EXIT_NOT_MERGED
    for result in merged:
        print(f"merged {result.describe()}")
    if not merged:
        print(f"hour {args.hour} is already merged" if hour is not None
              else f"nothing to merge: no closed hour with segments under {', '.join(map(str, roots))}")
    return 0


class _ProgressBar:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    WIDTH = 30

    def __init__(self) -> None:
        self.shown = -1
        self.enabled = sys.stderr.isatty()

    def __call__(self, fraction: float) -> None:
        percent = int(max(0.0, min(1.0, fraction)) * 100)
        if not self.enabled or percent == self.shown:
            return
        self.shown = percent
        filled = self.WIDTH * percent // 100
        sys.stderr.write(f"\r[{'#' * filled}{' ' * (self.WIDTH - filled)}] {percent:3d}%")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\n")


def _export(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from controller.config import ConfigError, VigilConfig, load_config
    from controller.surfaces.export import (
        ExportError,
        NoFootage,
        SpanTooLong,
        clip_manifest,
        export_clip,
        resolve_span,
        utc_text,
    )
    from hw.footage import manifest_path
    from hw.integrity import write_manifest

    out = Path(args.output)
    for taken in (out, manifest_path(out)):
        if taken.exists() or taken.is_symlink():
            print(f"vigil export: {taken} exists; vigil never overwrites a file", file=sys.stderr)
            return 1
    try:
        offline = (args.root or args.url) and not args.config
        cfg = VigilConfig() if offline else load_config(args.config).config
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    try:
        start, end = resolve_span(args.start, args.end, args.duration, max_seconds=None)
    except ValueError as err:
        print(f"vigil export: {err}", file=sys.stderr)
        return EXIT_USAGE
    bar = _ProgressBar()
    temp = out.with_name(f".{out.name}.part")
    if args.url is not None or args.root is None:
        return _export_over_api(args, cfg, out, temp, bar)
    with tempfile.TemporaryDirectory(prefix="vigil-export-") as workdir:
        try:
            clip = export_clip(Path(args.root), start, end, temp, workdir=Path(workdir), progress=bar)
        except NoFootage as err:
            bar.done()
            near = "; ".join(f"{utc_text(s.start)} to {utc_text(s.end)}" for s in err.nearest)
            print(f"vigil export: {err}" + (f" (recorded nearby: {near})" if near else ""), file=sys.stderr)
            return 1
        except (ExportError, SpanTooLong, OSError) as err:
            bar.done()
            temp.unlink(missing_ok=True)
            print(f"vigil export: {err}", file=sys.stderr)
            return 1
        bar.done()
        # Signed when this machine holds the unit's key (integrity.key_file); never made here.
        signer = _existing_signer(cfg)
        write_manifest(out, clip_manifest(clip, signer, name=out.name))
    os.rename(temp, out)
    print(f"{out}: {clip.describe()}")
    print(f"{manifest_path(out)}: its manifest" + ("" if signer else " (unsigned: no key here)"))
    return 0


def _existing_signer(cfg: VigilConfig) -> Signer | None:
    from controller.keys import KeyError_, key_path, load_key, signer_for

    if not cfg.integrity.enabled:
        return None
    try:
        return signer_for(load_key(key_path(cfg.integrity.key_file)), cfg.unit.id)
    except KeyError_:
        return None


def _export_over_api(args: argparse.Namespace, cfg: VigilConfig, out: Path, temp: Path,
                     bar: _ProgressBar) -> int:
    import http.client
    import json
    import os
    import urllib.parse
    from pathlib import Path

    from controller.client import base_url, read_token
    from hw.footage import manifest_path
    from hw.integrity import write_manifest

    url = args.url or base_url(cfg.api.listen)
    files = [Path(args.token_file)] if args.token_file else [cfg.api.viewer_token_file, cfg.api.token_file]
    token = None
    for path in files:
        try:
            token = read_token(path)
            break
        except (OSError, ValueError):
            continue
    query = {"start": args.start, **({"end": args.end} if args.end else {"duration": str(args.duration)})}
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=600)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", f"{parsed.path.rstrip('/')}/export?{urllib.parse.urlencode(query)}",
                     headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            body = response.read(64 * 1024).decode("utf-8", "replace")
            print(f"vigil export: {url}/export answered {response.status}: {body}", file=sys.stderr)
            return 1
        total = int(response.headers.get("Content-Length") or 0)
        got = 0
        with open(temp, "xb") as f:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                got += len(chunk)
                if total:
                    bar(got / total)
        bar.done()
        if total and got != total:
            temp.unlink(missing_ok=True)
            print(f"vigil export: the answer ended after {got} of {total} bytes", file=sys.stderr)
            return 1
        manifest_url = response.headers.get("X-Vigil-Manifest")
        manifest = None
        if manifest_url:
            conn.request("GET", f"{parsed.path.rstrip('/')}{manifest_url}", headers=headers)
            answer = conn.getresponse()
            raw = answer.read(64 * 1024 * 1024)
            try:
                manifest = json.loads(raw) if answer.status == 200 else None
            except ValueError:
                manifest = None
            if not isinstance(manifest, dict):
                print(f"vigil export: the clip's manifest answered {answer.status}", file=sys.stderr)
        if isinstance(manifest, dict):
            write_manifest(out, manifest)
        os.rename(temp, out)
        print(f"{out}: {response.headers.get('X-Vigil-Frames')} frames from "
              f"{response.headers.get('X-Vigil-Start')} to {response.headers.get('X-Vigil-End')}")
        if isinstance(manifest, dict):
            print(f"{manifest_path(out)}: its manifest")
        return 0
    except (OSError, http.client.HTTPException) as err:
        temp.unlink(missing_ok=True)
        print(f"vigil export: cannot reach the daemon at {url}: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        conn.close()


def _doctor(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config
    from controller.doctor import examine
    from controller.logs import setup_logging

    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    setup_logging("WARNING")  # the report is the output; the probes' INFO lines would drown it
    report = examine(loaded.config, source=loaded.source)
    sys.stdout.write(report.text())
    return report.exit_code


def _diagram(args: argparse.Namespace) -> int:
    from states.machine import mermaid

    sys.stdout.write(mermaid())
    return 0


def _url_option(text: str) -> str:
    """--url's value, checked: a bad one is a usage error (exit 2), not a traceback."""
    from controller.client import check_url

    try:
        return check_url(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} {err}; give the API's URL, such as "
                                         "http://127.0.0.1:8080") from None


def _token_file_option(text: str) -> str:
    """--token-file's value, unless it names a FIFO, device, socket, directory or huge file:
    those are usage errors (exit 2). A missing or unreadable file is reported, exit 1, when the
    token is read."""
    from pathlib import Path

    from controller.client import TOKEN_MAX_BYTES
    from controller.config.files import FileRefused, read_regular_file

    try:
        read_regular_file(Path(text), max_bytes=TOKEN_MAX_BYTES)
    except (FileRefused, IsADirectoryError) as err:
        reason = err.reason if isinstance(err, FileRefused) else "is a directory"
        raise argparse.ArgumentTypeError(f"cannot read the API token from {text}: {reason}") from None
    except OSError:
        pass
    return text


class _VersionAction(argparse.Action):
    """`--version`: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib import metadata

        try:
            version = metadata.version("vigil")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        print(f"vigil {version}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil", description="Crash-safe recorder daemon for headless camera units."
    )
    parser.add_argument("--version", action=_VersionAction, help="print vigil's version and exit")
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
    with_config(command("doctor", "list the cameras, encoder, storage and GPIO this machine offers "
                                  "and check the config against them; exit 1 when the configured "
                                  "camera or storage cannot record, 78 on a bad config", _doctor))
    merge = command("merge", "merge the segments of closed hours into hourly files now; an hour "
                             "still being recorded is left alone (exit 1)", _merge)
    merge.add_argument("--hour", metavar="YYYY-MM-DDTHH",
                       help="the hour to merge, in UTC (default: every closed hour)")
    merge.add_argument("--root", metavar="ROOT",
                       help="the recording root (default: recording.root and fallback_roots from "
                            "the config)")
    with_config(merge)

    def with_url(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", metavar="URL", type=_url_option,
                       help="the daemon's API, e.g. http://127.0.0.1:8080 (default: from api.listen "
                            "in the config)")

    status = command("status", "show the running daemon's status; exit 0 when it is recording, "
                               "1 when running but not recording, 3 when not running, 4 when "
                               "its state cannot be known (LSB status codes)", _status)
    with_url(status)
    with_config(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    mqtt = command("mqtt", "MQTT tools (see the README's MQTT section)", None)
    mqtt_sub = mqtt.add_subparsers(dest="mqtt_command", required=True, metavar="ACTION")
    remove = mqtt_sub.add_parser(
        "remove-discovery", help="remove this unit from Home Assistant: publish an empty retained "
                                 "discovery config for each of its entities; exit 1 when the "
                                 "broker cannot be reached",
        description="Remove this unit from Home Assistant: publish an empty retained discovery "
                    "config for each of its entities (set mqtt.discovery: false first, or the "
                    "running daemon announces the unit again when Home Assistant restarts).")
    remove.set_defaults(handler=_mqtt_remove_discovery)
    with_config(remove)
    reset = command("reset", "emergency reset of the running daemon: drop everything, reload "
                             "the config, start again", _reset)
    with_url(reset)
    reset.add_argument("--token-file", metavar="FILE", type=_token_file_option,
                       help="file holding the API token (default: api.token_file in the config)")
    with_config(reset)
    export = command("export", "write one MP4 of a span of footage (stream copy, no re-encode), "
                               "from the running daemon's API or, with --root, straight from the "
                               "recording root (a card in a reader)", _export)
    export.add_argument("--start", required=True, metavar="TIME",
                        help="ISO 8601, e.g. 2026-05-09T14:03:10Z (UTC when no offset is given)")
    span = export.add_mutually_exclusive_group(required=True)
    span.add_argument("--end", metavar="TIME", help="ISO 8601")
    span.add_argument("--duration", metavar="SECONDS", type=float, help="instead of --end")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="the MP4 to write")
    where = export.add_mutually_exclusive_group()
    where.add_argument("--url", metavar="URL", type=_url_option,
                       help="the daemon's API (default: from api.listen in the config)")
    where.add_argument("--root", metavar="ROOT", help="read the footage under ROOT directly")
    export.add_argument("--token-file", metavar="FILE", type=_token_file_option,
                        help="the viewer token (default: api.viewer_token_file, then api.token_file)")
    with_config(export)
    check_footage = command("verify", "check footage against its signed manifests (altered "
                                      "fragments, breaks in the chain, bad signatures), offline; "
                                      "exit 0 only when everything checks", _verify)
    check_footage.add_argument("paths", nargs="+", metavar="PATH",
                               help="segment or merged files, hour folders or a whole recording root")
    check_footage.add_argument("--key", metavar="PUBKEY",
                               help="the unit's public key (`vigil key`), or a file holding it; "
                                    "default: every manifest must be signed by one same key")
    check_footage.add_argument("--since", metavar="TIME",
                               help="check only footage that ends at or after TIME (ISO 8601, UTC "
                                    "when no offset is given)")
    check_footage.add_argument("--until", metavar="TIME",
                               help="check only footage that starts before TIME (ISO 8601)")
    from controller.upload_command import add_parser as add_upload

    add_upload(sub, url_option=_url_option, token_file_option=_token_file_option)
    key = command("key", "print the public key footage manifests are signed with", _key)
    key.add_argument("--create", action="store_true",
                     help="create the key pair at integrity.key_file when there is none")
    key.add_argument("--key-file", metavar="PATH",
                     help="the key file to read (or --create), instead of the one the config names "
                          "(deploy/install.sh creates the unit's key with it)")
    with_config(key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
