"""How the benchmarks put vigil and ffmpeg on the same frames with the same encoder settings.

Both sides read FFmpeg's `testsrc2` lavfi source and encode it with libx264 at the settings
hw/encoder.py uses (preset, zerolatency, crf, a keyframe every fps x fragment_seconds
frames, SPS/PPS on every keyframe) into fragmented MP4 segments. In-process runs assemble
the recording path exactly as the daemon does (hw.factory.Hardware); subprocess runs start
`vigil run` with a config file written here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import psutil
from loguru import logger

from hw.camera import Camera, CameraMode, EncodedPacket, Frame
from hw.encoder import keyframe_interval
from hw.errors import CameraTimeout
from hw.factory import Hardware, queue_frames_for
from hw.integrity import sample_count
from hw.recovery import playable_length
from tests.specs import camera_spec, recording_spec

FPS = 30
FRAGMENT_SECONDS = 1.0
SEGMENT_SECONDS = 60.0
PRESET = "ultrafast"
CRF = 23
# vigil's writer adds use_metadata_tags only to store its start-time tag; these flags fragment.
FFMPEG_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
QUEUE_FRAMES = 60  # recording.queue_frames' default
POLL_SECONDS = 0.005
NO_FFMPEG = "ffmpeg not installed (apt-get install -y ffmpeg, or `make bench`): no reference figure"
LOGGERS = ("hw", "controller", "states")
UNIT_FILE = Path(__file__).resolve().parents[1] / "deploy" / "vigil.service"
PACKAGES = ("controller", "hw", "states")


def lavfi_spec(width: int, height: int, fps: float = FPS) -> str:
    return f"testsrc2=size={width}x{height}:rate={fps:g}"


def has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def x264_ffmpeg_args(fps: float = FPS, *, preset: str = PRESET, crf: int = CRF,
                     fragment_seconds: float = FRAGMENT_SECONDS) -> list[str]:
    """ffmpeg's output options for the encoder settings hw.encoder.H264Encoder uses."""
    gop = keyframe_interval(fps, fragment_seconds)
    return ["-c:v", "libx264", "-preset", preset, "-tune", "zerolatency", "-crf", str(crf),
            "-pix_fmt", "yuv420p", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1"]


def ffmpeg_segment_args(out_dir: Path, segment_seconds: float = SEGMENT_SECONDS) -> list[str]:
    """ffmpeg's segment muxer writing fragmented MP4 as vigil's segment writer does (no fsync)."""
    # flush_packets=1 as vigil's writer sets it: a fragment reaches the file when it is complete,
    # not when ffmpeg's I/O buffer next fills.
    return ["-f", "segment", "-segment_time", f"{segment_seconds:g}", "-segment_format", "mp4",
            "-segment_format_options", f"movflags={FFMPEG_MOVFLAGS}:flush_packets=1",
            str(out_dir / "seg%05d.mp4")]


def ffmpeg_record_command(out_dir: Path, width: int, height: int, *, frames: int | None = None,
                          realtime: bool = False, benchmark: bool = False) -> list[str]:
    """The reference: ffmpeg encoding testsrc2 into fragmented-MP4 segments like vigil."""
    command = ["ffmpeg", "-hide_banner", "-nostats", "-nostdin", "-y",
               "-loglevel", "info" if benchmark else "error"]
    if benchmark:
        command.append("-benchmark")
    if realtime:
        command.append("-re")
    command += ["-f", "lavfi", "-i", lavfi_spec(width, height)]
    if frames is not None:
        command += ["-frames:v", str(frames)]
    return command + x264_ffmpeg_args() + ffmpeg_segment_args(out_dir)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """One log line per segment would bury the table."""
    for name in LOGGERS:
        logger.disable(name)
    try:
        yield
    finally:
        for name in LOGGERS:
            logger.enable(name)


class HeldBackCamera:
    """A camera that waits for room in the recorder's queue instead of losing frames to it.

    An unpaced source is faster than the encoder; without this it would fill the queue and
    most frames would be dropped (counted, as designed). Holding the camera back measures
    the fastest rate at which vigil records every frame. It delivers `frames` frames, then
    times out until the run is over.
    """

    def __init__(self, inner: Camera, room: threading.Semaphore, frames: int,
                 finished: threading.Event) -> None:
        self._inner = inner
        self._room = room
        self._left = frames
        self._finished = finished
        self.name = inner.name

    @property
    def mode(self) -> CameraMode:
        return self._inner.mode

    def open(self) -> None:
        self._inner.open()

    def close(self) -> None:
        self._inner.close()

    def read(self, timeout: float) -> Frame | EncodedPacket:
        if self._left <= 0:
            self._finished.wait(timeout)
            raise CameraTimeout("benchmark source delivered all its frames")
        if not self._room.acquire(timeout=timeout):
            raise CameraTimeout("recorder queue stayed full")
        self._left -= 1
        return self._inner.read(timeout)


class FrameEncoder(Protocol):
    """What the pipeline needs of an encoder: hw.encoder.H264Encoder's interface."""

    def encode(self, frame: Frame) -> list[EncodedPacket]: ...

    def flush(self) -> list[EncodedPacket]: ...


class RoomMakingEncoder:
    """Wraps an encoder: each frame it takes frees a queue slot; sets `finished` after `frames` packets."""

    def __init__(self, inner: FrameEncoder, room: threading.Semaphore, frames: int,
                 finished: threading.Event) -> None:
        self._inner = inner
        self._room = room
        self._target = frames
        self._finished = finished
        self.packets_out = 0

    def encode(self, frame: Frame) -> list[EncodedPacket]:
        self._room.release()
        packets = self._inner.encode(frame)
        self.packets_out += len(packets)
        if self.packets_out >= self._target:
            self._finished.set()
        return packets

    def flush(self) -> list[EncodedPacket]:
        return self._inner.flush()


@dataclass(frozen=True)
class InProcessRun:
    """What one in-process recording run did and how long it took."""

    seconds: float
    cpu_seconds: float
    frames_recorded: int
    frames_dropped: int
    output_bytes: int


def record_in_process(root: Path, width: int, height: int, frames: int, *,
                      encoder: FrameEncoder | None = None, camera: Camera | None = None,
                      deadline_seconds: float = 600.0) -> InProcessRun:
    """Record `frames` frames of testsrc2 through the pipeline the daemon builds, unpaced.

    `encoder` replaces the libx264 encoder (the overhead benchmark's no-op); `camera`
    replaces the file camera. The clock runs from starting the pipeline to its stop
    returning (the last segment closed and fsynced).
    """
    hardware = Hardware(
        camera_spec(backend="file", width=width, height=height, fps=FPS,
                   source="lavfi:" + lavfi_spec(width, height), pace=False),
        recording_spec(root=root, segment_seconds=SEGMENT_SECONDS, fragment_seconds=FRAGMENT_SECONDS,
                      encoder_preset=PRESET, crf=CRF, queue_frames=QUEUE_FRAMES))
    # The pipeline bounds its queue in bytes too: hold the camera back to the real length.
    room = threading.Semaphore(queue_frames_for(hardware.camera.mode, QUEUE_FRAMES) - 1)
    finished = threading.Event()
    errors: list[str] = []

    def when_error(category: str, reason: str) -> None:
        if category != "camera_timeout":
            errors.append(f"{category}: {reason}")
            finished.set()

    source = camera if camera is not None else hardware.make_camera()
    held = HeldBackCamera(source, room, frames, finished)
    held.open()
    pipeline = hardware.make_pipeline(held, root, when_error)
    inner = encoder if encoder is not None else pipeline.encoder
    assert inner is not None, "the file camera hands over frames: the pipeline has an encoder"
    # The pipeline reads its encoder when its thread starts: wrapping it here is in time.
    pipeline.encoder = RoomMakingEncoder(inner, room, frames, finished)  # type: ignore[assignment]
    cpu = time.process_time()
    began = time.perf_counter()
    pipeline.start()
    finished.wait(deadline_seconds)
    pipeline.stop()
    seconds = time.perf_counter() - began
    cpu_seconds = time.process_time() - cpu
    stats = pipeline.stats
    if errors or stats.frames_recorded != frames:
        raise RuntimeError(f"vigil recorded {stats.frames_recorded} of {frames} frames "
                           f"(dropped {stats.frames_dropped}): {errors}")
    size = sum(p.stat().st_size for p in root.rglob("*.mp4"))
    return InProcessRun(seconds, cpu_seconds, stats.frames_recorded, stats.frames_dropped, size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_vigil_config(path: Path, root: Path, width: int, height: int, *, paced: bool = True) -> Path:
    """A config recording testsrc2 through the file backend with the defaults a unit ships with."""
    path.write_text("\n".join([
        "camera:",
        "  backend: file",
        f"  source: 'lavfi:{lavfi_spec(width, height)}'",
        f"  width: {width}",
        f"  height: {height}",
        f"  fps: {FPS}",
        f"  pace: {'true' if paced else 'false'}",
        "recording:",
        f"  root: {root}",
        f"  segment_seconds: {SEGMENT_SECONDS:g}",
        f"  fragment_seconds: {FRAGMENT_SECONDS:g}",
        f"  encoder_preset: {PRESET}",
        f"  crf: {CRF}",
        "api:",
        # The API runs as it does on a unit, on a port of its own so runs never collide.
        f"  listen: 127.0.0.1:{free_port()}",
        "",
    ]))
    return path


def vigil_command(config: Path) -> list[str]:
    """`vigil run --config CONFIG` through the installed entry point, as systemd starts it."""
    script = Path(sys.executable).with_name("vigil")
    if script.exists():
        return [str(script), "run", "--config", str(config)]
    return [sys.executable, "-m", "controller.cli", "run", "--config", str(config)]


def first_fragment(root: Path) -> Path | None:
    """A segment file under `root` that holds at least one complete moof+mdat, if any."""
    for path in root.rglob("*.mp4*"):
        with contextlib.suppress(OSError, ValueError):
            if playable_length(path)[1] >= 1:
                return path
    return None


def frames_in_file(path: Path) -> int:
    """Frames in the complete fragments (moof + whole mdat) of one fragmented-MP4 file so far."""
    frames, pending = 0, 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(16)
            box_size, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if box_size == 1 and len(head) == 16:
                box_size = int.from_bytes(head[8:16], "big")
            if box_size < 8 or offset + box_size > size:
                break  # the fragment still being written
            if kind == b"moof":
                f.seek(offset)
                pending = sample_count(f.read(box_size))
            elif kind == b"mdat":
                frames, pending = frames + pending, 0
            offset += box_size
    return frames


def frames_on_disk(root: Path) -> int:
    """Frames recorded under `root` so far: every segment's complete fragments, counted from
    their `trun` boxes (vigil's `.partial` files and ffmpeg's segments alike)."""
    total = 0
    for path in root.rglob("*.mp4*"):
        with contextlib.suppress(OSError):  # renamed or merged away meanwhile
            total += frames_in_file(path)
    return total


def wait_for_first_fragment(root: Path, process: subprocess.Popen[bytes], timeout: float) -> float:
    """perf_counter() when the first complete fragment is on disk; raises if the process dies."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if first_fragment(root) is not None:
            return time.perf_counter()
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited ({process.returncode}) before its first fragment")
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"no fragment under {root} within {timeout:.0f}s")


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A scratch directory under the system's temp dir, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0,
                 while_stopping: Callable[[], object] | None = None) -> None:
    """SIGTERM (SIGINT for ffmpeg, which finishes its file on it), then reaped.

    `while_stopping` is called every few milliseconds until the process has exited.
    """
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT if Path(str(process.args[0])).name == "ffmpeg" else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if while_stopping is not None:
            while_stopping()
        if process.poll() is not None:
            return
        time.sleep(POLL_SECONDS)
    process.kill()
    process.wait()


@dataclass
class Recorder:
    """A recorder process (vigil or ffmpeg) writing segments under `root`."""

    name: str
    process: subprocess.Popen[bytes]
    root: Path
    launched: float  # perf_counter() just before the process was started
    peak_rss: int = 0  # bytes, as far as note_peak() has seen

    @property
    def usage(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far, all its threads."""
        times = self.usage.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(self.usage.memory_info().rss)

    def note_peak(self) -> None:
        """Keep the process's RSS high-water mark (VmHWM) while it can still be read."""
        self.peak_rss = max(self.peak_rss, peak_rss_bytes(self.process.pid))


def peak_rss_bytes(pid: int) -> int:
    """The process's own RSS high-water mark, VmHWM (0 once it has exited).

    Not ru_maxrss: that one keeps the high-water mark from before exec, i.e. the RSS of
    the Python process that forked the child, which can be larger than the child's own.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def unit_environment() -> dict[str, str]:
    """This process's environment with deploy/vigil.service's `Environment=` lines on top:
    what `vigil run` gets under systemd (MALLOC_ARENA_MAX, PYTHONUNBUFFERED, ...)."""
    env = dict(os.environ)
    for line in UNIT_FILE.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            env[name] = value
    return env


def compile_sources() -> None:
    """Byte-compile vigil's packages where they are installed, as pip does on a unit.

    pip compiles a wheel's modules when it installs them (deploy/install.sh), and the unit's
    read-only file system could not keep a cache written later. A work tree run with
    PYTHONDONTWRITEBYTECODE set would otherwise compile every vigil module at each launch
    (0.1 to 0.3 s measured here), a cost no unit pays. Modules already compiled are skipped.
    """
    import compileall
    import importlib

    for package in PACKAGES:
        module = importlib.import_module(package)
        compileall.compile_dir(str(Path(str(module.__file__)).parent), quiet=2)


def launch_vigil(work: Path, width: int, height: int, name: str = "vigil") -> Recorder:
    """`vigil run` recording testsrc2 in real time (file backend, paced) into work/NAME,
    compiled and with the environment of the systemd unit (see compile_sources)."""
    root = work / name
    config = write_vigil_config(work / f"{name}.yaml", root, width, height)
    compile_sources()
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    launched = time.perf_counter()
    process = subprocess.Popen(vigil_command(config), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=unit_environment())
    log.close()
    return Recorder(name, process, root, launched)


def launch_ffmpeg(work: Path, width: int, height: int, name: str = "ffmpeg") -> Recorder:
    """`ffmpeg -re` recording the same testsrc2 with the same settings into work/NAME."""
    root = work / name
    root.mkdir()
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    launched = time.perf_counter()
    process = subprocess.Popen(ffmpeg_record_command(root, width, height, realtime=True), stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    return Recorder(name, process, root, launched)


@contextlib.contextmanager
def running(*recorders: Recorder) -> Iterator[tuple[Recorder, ...]]:
    """The recorders, stopped (and reaped) however the block ends."""
    try:
        yield recorders
    finally:
        for recorder in recorders:
            stop_process(recorder.process)


def load_note() -> str:
    """The machine's load average: other work on the machine skews every figure."""
    one, five, _ = os.getloadavg()
    return f"load average during the run: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


_X264_SEI = re.compile(rb"x264 - core (\d+)[ -~]*? - options: ([ -~]+)")


def x264_settings(path: Path) -> tuple[str, dict[str, str]]:
    """(libx264 core version, its options) from the SEI libx264 writes into the first keyframe."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    found = _X264_SEI.search(head)
    if found is None:
        return "?", {}
    options = dict(o.split("=", 1) for o in found.group(2).decode().split() if "=" in o)
    return found.group(1).decode(), options


def encoder_note(ours: Path, ref: Path) -> str:
    """Which libx264 each side ran, and whether their options (as libx264 records them) match."""
    (our_core, our_options), (ref_core, ref_options) = x264_settings(ours), x264_settings(ref)
    keys = our_options.keys() | ref_options.keys()
    differ = sorted(k for k in keys if our_options.get(k) != ref_options.get(k))
    same = "identical" if not differ else "differ in " + ", ".join(
        f"{k} ({our_options.get(k)} vs {ref_options.get(k)})" for k in differ)
    return (f"libx264: vigil core {our_core} (PyAV {av.__version__}, FFmpeg {av.ffmpeg_version_info}), "
            f"ffmpeg core {ref_core} (ffmpeg {ffmpeg_version()}); options as libx264 records them: {same}")


def ffmpeg_version() -> str:
    """The installed ffmpeg's version, e.g. `5.1.6-0+deb12u1`."""
    done = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    return words[2] if len(words) > 2 and words[0] == "ffmpeg" else "?"
