"""VLC (Debian's 3.0, headless `cvlc`) plays vigil's live and recorded HLS, frame for frame.

One real `vigil run` (synthetic camera, 160x120 at 30 fps, 1 s segments of 0.5 s fragments)
serves the module. VLC copies what it plays, without re-encoding, into a Matroska file
(`--sout '#std{access=file,mux=mkv,dst=FILE}'`); PyAV decodes that file and the synthetic
camera's frame-number code says which frames VLC got. Matroska (VLC hands `mkv` to
libavformat's muxer) because VLC's own muxers lose the end of a recorded span: its MPEG-TS
muxer left the last 6 frames (0.2 s) out of the file, its MP4 muxer the last frame.

The unit is secured as a user should run it: a viewer token, no public footage. VLC 3.0
sends no header of the user's choosing, so it gets the token as the password of the URL's
credentials (`http://viewer:TOKEN@host/live.m3u8`), which its HTTP access sends only when a
401 challenges Basic; its HLS demuxer then fetches the media with its own HTTP client, which
sends no credentials at all, and is let in by the signatures the playlist gave each media URI
(controller/surfaces/media_signature.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
import pytest

from hw import framecode
from tests.e2e.test_footage import wait_until
from tests.helpers import (
    gaps,
    hls_span_numbers,
    recorded_frames,
    recorded_span,
    segment_first_frames,
    segments,
)
from tests.processes import free_port, stop_vigil, wait_for_segments

pytestmark = pytest.mark.skipif(shutil.which("cvlc") is None,
                                reason="Debian's VLC is not installed (tools/system-deps.sh test "
                                       "installs vlc-bin and vlc-plugin-base)")

FPS = 30
NOBODY = 65534  # Debian's nobody/nogroup
VLC_SECONDS = 120.0  # a hang guard on each VLC run, never a pass criterion
VIEWER = "vlc-viewer-token"


@dataclass
class Unit:
    proc: subprocess.Popen[str]
    url: str  # with the viewer's credentials
    root: Path
    port: int


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unit]:
    base = tmp_path_factory.mktemp("vlc")
    port = free_port()
    root = base / "rec"
    config = base / "vigil.yaml"
    viewer = base / "viewer-token"
    viewer.write_text(VIEWER + "\n")
    viewer.chmod(0o600)
    config.write_text(
        f"camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: {FPS}\n"
        f"recording:\n  root: {root}\n  segment_seconds: 1\n  fragment_seconds: 0.5\n  merge: 'off'\n"
        "storage:\n  retention_days: 0\n  reserve_mb: 0\n  reserve_percent: 0\n"
        "gpio:\n  enabled: false\n"
        f"api:\n  listen: 127.0.0.1:{port}\n  viewer_token_file: {viewer}\n"
        f"  token_file: {base / 'no-api-token'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "STATE_DIRECTORY": str(base / "state")})
    try:
        wait_for_segments(proc, root, 5, timeout=60)
        yield Unit(proc, f"http://viewer:{VIEWER}@127.0.0.1:{port}", root, port)
    finally:
        output = stop_vigil(proc)
        if proc.returncode != 0:
            print(output[-5000:])


def vlc_frame_numbers(url: str, *options: str) -> list[int]:
    """The frame numbers of what `cvlc` plays from `url` (every frame it passes on, once:
    the stream is copied, not decoded and shown at a rate)."""
    # VLC will not run as root (bin/vlc.c, unless built with --enable-run-as-root), so as
    # root it runs as nobody, in a directory of nobody's (a test's tmp_path is root's alone).
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="vigil-vlc-") as folder:
        work = Path(folder)
        if as_root:
            os.chown(work, NOBODY, NOBODY)
        out = work / "played.mkv"
        # No sound output and no D-Bus control interface: there is neither here to talk to.
        command = ["cvlc", "--play-and-exit", "--aout=adummy", "--no-dbus", *options,
                   "--sout", f"#std{{access=file,mux=mkv,dst={out}}}", url]
        result = subprocess.run(command, capture_output=True, text=True, timeout=VLC_SECONDS, check=False,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)},
                                user=NOBODY if as_root else None, group=NOBODY if as_root else None,
                                extra_groups=[] if as_root else None)
        assert result.returncode == 0, result.stderr[-3000:]
        assert out.exists() and out.stat().st_size > 0, f"VLC wrote nothing: {result.stderr[-3000:]}"
        with av.open(str(out)) as container:
            return [framecode.read_video_frame(f) for f in container.decode(video=0)]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_vlc_plays_the_live_playlist_across_segment_boundaries_losing_no_frame(unit: Unit) -> None:
    # --run-time counts the stream's own time: 5 s of video, however long the machine takes.
    numbers = vlc_frame_numbers(f"{unit.url}/live.m3u8", "--run-time=5")
    assert len(numbers) > 2 * FPS, numbers
    wait_until(lambda: max(segment_first_frames(unit.root)) > numbers[-1], "the played frames closed")
    # Every recorded frame once, in order.
    assert numbers == recorded_span(unit.root, numbers[0], numbers[-1]), gaps(numbers)
    crossed = [n for n in segment_first_frames(unit.root) if numbers[0] < n <= numbers[-1]]
    assert len(crossed) >= 2, (crossed, numbers[0], numbers[-1])


def test_vlc_plays_a_recorded_span_from_the_vod_playlist_frame_for_frame(unit: Unit) -> None:
    closed = segments(unit.root)[1:5]
    frames = [f for path in closed for f in recorded_frames(path)]
    assert gaps([f.number for f in frames]) == []
    # From inside the first of these segments to inside the third, between frames: two
    # segment boundaries.
    first, third = recorded_frames(closed[0]), recorded_frames(closed[2])
    start = first[len(first) // 2 + 2].wallclock + 0.5 / FPS
    end = third[len(third) // 2 - 3].wallclock + 0.5 / FPS
    wanted = hls_span_numbers(frames, start, end)
    assert len(wanted) > FPS
    assert vlc_frame_numbers(f"{unit.url}/vod.m3u8?start={iso(start)}&end={iso(end)}") == wanted
