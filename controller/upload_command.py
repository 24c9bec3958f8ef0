"""`vigil upload status` and `vigil upload now`: against the running daemon, or a card offline.

Without `--root` both ask the daemon's API (`GET /upload/status`, `POST /actions/upload`
with the action token) and `now` follows its progress there. With `--root ROOT` they work on
the card itself, as `vigil export --root` does: `status` reads the queue records in
ROOT/.vigil-upload without changing anything, `now` runs the daemon's own uploader in this
process with the config's `upload` settings. One uploader per root: `now --root` on a root
whose queue a running daemon holds (a lock in ROOT/.vigil-upload) is refused at once, naming
the holder's pid; ask that daemon without `--root` instead.

`now` exits 0 only when every file pending at the start (a segment merged meanwhile: its
hour) is in the bucket, verified; 1 when a permanent error stops it (it says what to fix),
the time runs out, or a file was deleted before it could go up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.config import VigilConfig
    from controller.surfaces.upload import UploadSettings

EX_CONFIG = 78
EXIT_NOT_DONE = 1
EXIT_UNREACHABLE = 2
EXIT_NOT_RUNNING = 3
EXIT_STATUS_UNKNOWN = 4
POLL_SECONDS = 1.0
DEFAULT_TIMEOUT_SECONDS = 3600.0
MiB = 1024 * 1024


def add_parser(sub: Any, *, url_option: Any, token_file_option: Any) -> None:
    """The `upload` command and its two actions, on the CLI's subparsers `sub`."""
    upload = sub.add_parser("upload", help="the upload queue: status, upload everything now",
                            description="The upload queue (see the README's upload section).")
    actions = upload.add_subparsers(dest="upload_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--url", metavar="URL", type=url_option,
                           help="the daemon's API (default: from api.listen in the config)")
        where.add_argument("--root", metavar="ROOT",
                           help="work on the recording root ROOT directly (a card in a reader), "
                                "not through the daemon")
        p.add_argument("--config", metavar="FILE",
                       help="config file (default: $VIGIL_CONFIG, /boot/firmware/vigil.yaml, "
                            "/etc/vigil/vigil.yaml, built-in defaults)")
        p.add_argument("--json", action="store_true", help="print the raw JSON")

    status = actions.add_parser(
        "status", help="pending, in flight, done and failed files (with reasons), the oldest "
                       "pending's age and the bytes left; exit 0 when uploads get through, 1 when "
                       "they fail or upload is off, 3 when the daemon is not running")
    common(status)
    status.set_defaults(handler=upload_status)
    now = actions.add_parser(
        "now", help="upload everything pending now, with progress (past upload.hours and a "
                    "permanent error's hold); exit 0 only when the bucket holds all of it, verified")
    common(now)
    now.add_argument("--token-file", metavar="FILE", type=token_file_option,
                     help="file holding the API token (default: api.token_file in the config)")
    now.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                     help=f"give up after this long (default {DEFAULT_TIMEOUT_SECONDS:g})")
    now.set_defaults(handler=upload_now)
    rescue = actions.add_parser(
        "salvage", help="after a unit is lost: complete the uploads of its open segments that "
                        "it left unfinished in the bucket (from any machine with the config's "
                        "upload settings); each becomes the footage up to its last part")
    rescue.add_argument("--config", metavar="FILE", help="config file with the unit's upload settings")
    rescue.add_argument("--json", action="store_true", help="print the raw JSON")
    rescue.set_defaults(handler=upload_salvage)


def _settings(config: str | None, who: str) -> UploadSettings | int:
    """The upload settings of the config file, or the exit code after saying why there are none."""
    from controller.config import ConfigError, load_config
    from controller.daemon import upload_settings_from_config

    try:
        loaded = load_config(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    settings = upload_settings_from_config(loaded.config)
    if settings is None:
        print(f"{who}: upload is off in {loaded.source}: set upload.enabled: true and upload.bucket "
              "(or give --config FILE with them)", file=sys.stderr)
        return EX_CONFIG
    return settings


def upload_salvage(args: argparse.Namespace) -> int:
    who = "vigil upload salvage"
    settings = _settings(args.config, who)
    if isinstance(settings, int):
        return settings
    try:
        from controller.surfaces.upload import make_client, salvage

        completed = salvage(settings, make_client(settings))
    except ImportError as err:
        print(f"{who}: {err}; install it with pip install 'vigil[upload]'", file=sys.stderr)
        return EXIT_NOT_DONE
    except Exception as err:  # the endpoint's answer, said plainly
        print(f"{who}: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_NOT_DONE
    if args.json:
        print(json.dumps(completed, indent=2))
    else:
        for item in completed:
            print(f"completed s3://{settings.bucket}/{item['key']}: {item['parts']} part(s), "
                  f"{item['bytes']} bytes")
        if not completed:
            print(f"nothing unfinished under s3://{settings.bucket}/{settings.key_prefix}")
    return 0


# -- status ------------------------------------------------------------------------------


def upload_status(args: argparse.Namespace) -> int:
    if args.root is not None:
        body = offline_status(Path(args.root))
        if body is None:
            print(f"vigil upload status: {args.root} is not a directory", file=sys.stderr)
            return EXIT_NOT_DONE
    else:
        answer = _get_status(args, "vigil upload status")
        if isinstance(answer, int):
            return answer
        body = answer
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_upload_status(body))
    if not body.get("enabled", True):
        return EXIT_NOT_DONE
    return 0 if body.get("endpoint", "ok") == "ok" else EXIT_NOT_DONE


def offline_status(root: Path) -> dict[str, Any] | None:
    """The queue on a card, read without writing: records, and closed footage none covers."""
    from controller.surfaces.upload import queue_status
    from controller.surfaces.upload_queue import UploadQueue
    from hw.footage import list_footage

    if not root.is_dir():
        return None
    queue = UploadQueue(key_prefix="")
    queue.load(root, read_only=True)
    unqueued = [f.path for f in list_footage(root) if queue.get(f.path) is None]
    return {"enabled": True, "root": str(root), "offline": True, **queue_status(queue, unqueued=unqueued)}


def _api(args: argparse.Namespace, *, needs_config: bool) -> tuple[str, VigilConfig | None] | int:
    from controller.client import base_url
    from controller.config import ConfigError, load_config

    if args.url and not needs_config:
        return args.url, None
    try:
        config = load_config(args.config).config
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    return args.url or base_url(config.api.listen), config


def _get_status(args: argparse.Namespace, who: str) -> dict[str, Any] | int:
    from controller.client import DaemonClient, DaemonUnreachable

    settings = _api(args, needs_config=False)
    if isinstance(settings, int):
        return settings
    url, _ = settings
    try:
        reply = DaemonClient(url).request("GET", "/upload/status")
    except DaemonUnreachable as err:
        print(f"{who}: {err} (is `vigil run` running, with api.enabled: true? --root reads a card "
              "directly)", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if reply.status != 200 or not isinstance(reply.body, dict):
        print(f"{who}: {url}/upload/status answered {reply.status}: {reply.detail}", file=sys.stderr)
        return EXIT_STATUS_UNKNOWN
    body: dict[str, Any] = reply.body
    return body


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_upload_status(body: dict[str, Any]) -> str:
    """The upload status as a few lines for a terminal."""
    if not body.get("enabled", True):
        return f"upload: off ({body.get('reason', '')})\n"
    lines = []
    if body.get("offline"):
        lines.append(f"upload queue on {body['root']} (read offline)")
    else:
        lines.append(f"upload to s3://{body.get('bucket')}/{body.get('prefix', '')} at "
                     f"{body.get('endpoint_url') or 'AWS S3'}: {body.get('endpoint')}")
        stopped = body.get("stopped")
        if stopped:
            lines.append(f"  stopped by {stopped['code']} ({stopped['error']})")
            lines.append(f"  fix: {stopped['fix']}")
        elif body.get("error"):
            lines.append(f"  {body['error']} (next try in {body.get('retry_in_seconds', 0):g} s)")
    lines.append(f"  pending {body['pending']} file(s), {body['pending_bytes'] / MiB:.1f} MiB"
                 + (f", oldest waiting {_age(body['oldest_pending_seconds'])}" if body["pending"] else "")
                 + (f" ({body['unqueued']} not queued yet)" if body.get("unqueued") else ""))
    flight = body.get("in_flight") or []
    lines.append(f"  in flight {len(flight)}" + (f": {flight[0]['key']}" if flight else "")
                 + f"; multipart under way {body.get('started', 0)}")
    lines.append(f"  done {body['done']} (verified, still on the card)")
    lines.append(f"  failed {body['failed']}")
    for item in body.get("failed_items") or []:
        lines.append(f"    {item['key']}: {item['error']} ({item['attempts']} attempt(s))")
    now = body.get("now")
    if now:
        lines.append(f"  upload now: {now['uploaded']} of {now['files']} uploaded, {now['left']} left"
                     + (f", {now['gone']} deleted before upload" if now.get("gone") else ""))
    return "\n".join(lines) + "\n"


# -- now ---------------------------------------------------------------------------------


class _Progress:
    """One line per change on stderr: files uploaded of those asked, bytes left."""

    def __init__(self) -> None:
        self.shown: tuple[int, int] | None = None
        self.is_tty = sys.stderr.isatty()

    def __call__(self, now: dict[str, Any]) -> None:
        seen = (int(now.get("uploaded", 0)), int(now.get("left", 0)))
        if seen == self.shown or not now:
            return
        self.shown = seen
        line = (f"uploaded {now['uploaded']} of {now['files']} file(s), {now['left']} left "
                f"({now['left_bytes'] / MiB:.1f} MiB)")
        sys.stderr.write(("\r" + line) if self.is_tty else line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.is_tty and self.shown is not None:
            sys.stderr.write("\n")


def _outcome(now: dict[str, Any], who: str) -> int:
    if now.get("gone"):
        print(f"{who}: {now['gone']} file(s) were deleted before they could be uploaded; "
              f"{now['uploaded']} uploaded and verified", file=sys.stderr)
        return EXIT_NOT_DONE
    print(f"{now['uploaded']} file(s) uploaded and verified; nothing pending from before the "
          "command is left")
    return 0


def upload_now(args: argparse.Namespace) -> int:
    if args.root is not None:
        return _now_offline(args)
    return _now_over_api(args)


def _now_offline(args: argparse.Namespace) -> int:
    who = "vigil upload now"
    root = Path(args.root)
    if not root.is_dir():
        print(f"{who}: {root} is not a directory", file=sys.stderr)
        return EXIT_NOT_DONE
    settings = _settings(args.config, who)
    if isinstance(settings, int):
        return settings
    try:
        import boto3  # type: ignore[import-untyped]  # noqa: F401  (say it now, not mid-upload)

        from controller.surfaces.upload import Uploader
    except ImportError as err:
        print(f"{who}: {err}; install it with pip install 'vigil[upload]'", file=sys.stderr)
        return EXIT_NOT_DONE
    uploader = Uploader(settings, roots=lambda: [root])
    if not uploader.queue.load(root):
        print(f"{who}: {uploader.queue.busy.get(root, f'the upload queue of {root} is unusable')}; "
              f"ask it with `vigil upload now` (no --root), or wait until it is done", file=sys.stderr)
        return EXIT_NOT_DONE
    bar = _Progress()
    last: dict[str, Any] = {}

    def progress(now: dict[str, Any]) -> None:
        last.update(now)
        bar(now)

    finished = uploader.upload_all(deadline=time.monotonic() + args.timeout, progress=progress)
    bar.done()
    if args.json:
        print(json.dumps(uploader.status(), indent=2, sort_keys=True, default=str))
    if finished:
        return _outcome(last, who)
    stoppage = uploader.stoppage
    if stoppage is not None:
        print(f"{who}: stopped by {stoppage.code} ({stoppage.error})\n  fix: {stoppage.fix}",
              file=sys.stderr)
    else:
        print(f"{who}: {last.get('left', '?')} file(s) not uploaded within {args.timeout:g} s: "
              f"{uploader.last_error or 'no error reported'}", file=sys.stderr)
    return EXIT_NOT_DONE


def _now_over_api(args: argparse.Namespace) -> int:
    from controller.client import DaemonClient, DaemonUnreachable, read_token

    who = "vigil upload now"
    settings = _api(args, needs_config=args.token_file is None)
    if isinstance(settings, int):
        return settings
    url, config = settings
    token_file = Path(args.token_file) if args.token_file or config is None else config.api.token_file
    try:
        token = read_token(token_file)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        print(f"{who}: cannot read the API token from {token_file}: {reason}", file=sys.stderr)
        return EXIT_NOT_DONE
    client = DaemonClient(url, timeout=60.0)  # the answer waits for a scan of the roots
    try:
        reply = client.request("POST", "/actions/upload", token=token)
    except DaemonUnreachable as err:
        print(f"{who}: {err} (is `vigil run` running, with api.enabled: true? --root uploads from "
              "a card directly)", file=sys.stderr)
        return EXIT_UNREACHABLE
    if reply.status != 202 or not isinstance(reply.body, dict):
        print(f"{who}: {url}/actions/upload answered {reply.status}: {reply.detail}", file=sys.stderr)
        return EXIT_NOT_DONE
    started = float(reply.body["now"]["requested_at"])
    bar = _Progress()
    deadline = time.monotonic() + args.timeout
    body: dict[str, Any] = reply.body
    while True:
        now = body.get("now") or {}
        bar(now)
        if now.get("requested_at") != started:
            bar.done()
            print(f"{who}: another `upload now` took over; follow it with `vigil upload status`",
                  file=sys.stderr)
            return EXIT_NOT_DONE
        if now.get("finished"):
            bar.done()
            if args.json:
                print(json.dumps(body, indent=2, sort_keys=True))
            return _outcome(now, who)
        stopped = body.get("stopped")
        if stopped and float(stopped["since"]) >= started:
            bar.done()
            print(f"{who}: stopped by {stopped['code']} ({stopped['error']})\n  fix: {stopped['fix']}",
                  file=sys.stderr)
            return EXIT_NOT_DONE
        if time.monotonic() >= deadline:
            bar.done()
            print(f"{who}: {now.get('left')} file(s) not uploaded within {args.timeout:g} s: "
                  f"{body.get('error') or 'no error reported'}", file=sys.stderr)
            return EXIT_NOT_DONE
        time.sleep(POLL_SECONDS)
        try:
            answer = client.request("GET", "/upload/status")
        except DaemonUnreachable as err:
            bar.done()
            print(f"{who}: {err}", file=sys.stderr)
            return EXIT_UNREACHABLE
        if answer.status != 200 or not isinstance(answer.body, dict) or not answer.body.get("enabled"):
            bar.done()
            print(f"{who}: {url}/upload/status answered {answer.status}: {answer.detail}", file=sys.stderr)
            return EXIT_NOT_DONE
        body = answer.body
