"""The systemd side of a unit: the service file, the install script, and `vigil run` under systemd.

`systemd-analyze verify` checks the unit file for real (make test installs systemd's tools);
install.sh runs for real against a scratch root (DESTDIR-style, with useradd --prefix); and
the daemon runs as a process with $NOTIFY_SOCKET pointing at a socket this test reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli import EX_CONFIG
from controller.config import parse_config_text
from tests.conftest import REPO
from tests.fakes.notify_socket import ServiceManagerSocket, pings
from tests.helpers import gaps, recorded_numbers, segments

UNIT = REPO / "deploy" / "vigil.service"
INSTALL = REPO / "deploy" / "install.sh"
EXAMPLE = REPO / "deploy" / "vigil.example.yaml"
PACKAGE_PARTS = ("pyproject.toml", "README.md", "constraints.txt", "controller", "states", "hw", "deploy")
EXPOSURE_LIMIT = 2.5  # systemd-analyze security's scale: 0 sealed .. 10 unprotected


def directives(text: str) -> list[str]:
    """The unit's settings in order, without comments and blank lines."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", ";"))]


def setting(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in directives(text) if line.startswith(f"{key}=")]


def systemd_analyze_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed: `apt-get install -y systemd` provides it "
                    "(make test installs it)")
    return subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)


def with_runnable_exec_start(text: str, executable: Path) -> str:
    # verify insists that ExecStart's binary exists; /opt/vigil does not exist on this machine.
    return "\n".join(f"ExecStart={executable} run" if line.startswith("ExecStart=") else line
                     for line in text.splitlines()) + "\n"


@pytest.fixture
def stand_in_vigil(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "vigil"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


# --- the unit file ---------------------------------------------------------------------------


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path, stand_in_vigil: Path) -> None:
    real = UNIT.read_text()
    copy = tmp_path / "vigil.service"
    copy.write_text(with_runnable_exec_start(real, stand_in_vigil))
    # The copy differs from the real file in ExecStart only.
    assert [d for d in directives(copy.read_text()) if not d.startswith("ExecStart=")] == \
        [d for d in directives(real) if not d.startswith("ExecStart=")]

    done = systemd_analyze_verify(copy)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert str(copy) not in output, output  # verify names the file in every complaint

    # The check has teeth: a misspelt directive in the same unit is reported.
    broken = tmp_path / "broken" / "vigil.service"
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("WatchdogSec=30", "WatchdogSecs=30"))
    assert "WatchdogSecs" in systemd_analyze_verify(broken).stderr


def test_unit_file_matches_what_the_daemon_promises() -> None:
    text = UNIT.read_text()
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"],
        "Restart": ["on-failure"], "RestartSec": ["5"], "RestartPreventExitStatus": [str(EX_CONFIG)],
        "ExecStart": ["/opt/vigil/venv/bin/vigil run"], "User": ["vigil"], "Group": ["vigil"],
        "SupplementaryGroups": ["video gpio"], "ProtectSystem": ["strict"],
        "ReadWritePaths": ["-/var/lib/vigil/recordings"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "NoNewPrivileges": ["yes"], "TimeoutStopSec": ["15"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"], "DevicePolicy": ["closed"],
        "CapabilityBoundingSet": [""], "UMask": ["0027"], "ProtectProc": ["invisible"],
        "SystemCallFilter": ["@system-service", "~@privileged"],
        "LoadCredential": ["api-token:/etc/vigil/api-token", "viewer-token:/etc/vigil/viewer-token"],
        # Clock sync is waited for but not required: a unit without network still starts.
        "Wants": ["systemd-time-wait-sync.service"], "Requires": [],
        "After": ["time-sync.target local-fs.target"],
    }
    for key, value in expected.items():
        assert setting(text, key) == value, key
    assert setting(text, "PrivateDevices") == []  # it would hide the cameras
    allowed = {entry.split()[0] for entry in setting(text, "DeviceAllow")}
    assert {"char-video4linux", "char-media", "char-dma_heap", "char-gpiochip"} <= allowed


def exposure(unit: Path) -> tuple[float, str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed: `apt-get install -y systemd` provides it "
                    "(make test installs it)")
    done = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", output)
    assert match, output
    return float(match.group(1)), output


def test_unit_exposure_is_within_the_limit(tmp_path: Path) -> None:
    level, output = exposure(UNIT)
    assert level <= EXPOSURE_LIMIT, output
    # The measure has teeth: without the capability and system call lines the same unit is over.
    loose = tmp_path / "vigil.service"
    loose.write_text("\n".join(line for line in UNIT.read_text().splitlines()
                               if not line.startswith(("CapabilityBoundingSet=", "SystemCallFilter=",
                                                       "ProtectProc=", "PrivateMounts="))) + "\n")
    assert exposure(loose)[0] > EXPOSURE_LIMIT


def test_example_config_is_current_and_valid() -> None:
    spec = importlib.util.spec_from_file_location("example_config", REPO / "deploy" / "example_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert EXAMPLE.read_text() == module.example_text(), (
        "deploy/vigil.example.yaml is stale: run `python deploy/example_config.py`"
    )
    config = parse_config_text(EXAMPLE.read_text(), str(EXAMPLE))
    assert str(config.recording.root) == "/var/lib/vigil/recordings"


# --- install.sh ------------------------------------------------------------------------------


@pytest.fixture
def source_snapshot() -> Iterator[Path]:
    # A copy, so the digest install.sh keeps is not moved by edits made while the test runs.
    with tempfile.TemporaryDirectory(prefix="vigil-src-") as name:
        src = Path(name)
        for part in PACKAGE_PARTS:
            if (REPO / part).is_dir():
                shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / part, src / part)
        yield src


def scratch_root(root: Path) -> Path:
    """A root file system with just what a fresh Raspberry Pi OS has for this script."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nvideo:!::\n")
    (root / "boot" / "firmware").mkdir(parents=True)
    return root


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `root` with its type, mode, owner, and content checksum or link target."""
    listing: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            listing[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, content)
    return listing


def install(src: Path, root: Path, *args: str) -> str:
    done = subprocess.run(["sh", str(src / "deploy" / "install.sh"), "--destdir", str(root),
                           "--source", str(src), "--no-systemctl", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def passwd_entry(root: Path, user: str) -> list[str] | None:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")
    return None


def members(root: Path, group: str) -> list[str]:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return []


# Three installs, each building a venv with pip: minutes on a loaded 2-core machine (each run
# has its own 300 s bound); the suite's default 120 s is for tests that do not install.
@pytest.mark.timeout(900)
def test_install_is_idempotent_keeps_config_and_uninstall_keeps_recordings(
    tmp_path: Path, source_snapshot: Path
) -> None:
    root = scratch_root(tmp_path / "root")
    first = install(source_snapshot, root)
    assert "writing the example config to /boot/firmware/vigil.yaml" in first
    config = root / "boot" / "firmware" / "vigil.yaml"
    assert config.read_text() == EXAMPLE.read_text()
    user = passwd_entry(root, "vigil")
    assert user is not None and user[6] == "/usr/sbin/nologin"
    assert "vigil" in members(root, "video") and "vigil" in members(root, "gpio")
    recordings = root / "var" / "lib" / "vigil" / "recordings"
    assert recordings.is_dir() and recordings.stat().st_uid == int(user[2])
    unit = root / "etc" / "systemd" / "system" / "vigil.service"
    assert unit.read_text() == UNIT.read_text()  # the example's root is the unit's default
    tokens = [root / "etc" / "vigil" / name for name in ("api-token", "viewer-token")]
    for token in tokens:
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.stat().st_uid == 0, token
        assert len(token.read_text().strip()) == 64, token
    assert tokens[0].read_text() != tokens[1].read_text()  # viewer and operator kept apart
    # The footage signing key, made at install in the state directory for the vigil user only.
    key = root / "var" / "lib" / "vigil" / "integrity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == int(user[2])
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    public = subprocess.run([str(root / "opt" / "vigil" / "venv" / "bin" / "vigil"), "key", "--key-file",
                             str(key)], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert len(public) == 64 and f"public key {public}" in first
    dropin = root / "etc" / "systemd" / "system" / "systemd-time-wait-sync.service.d" / "vigil.conf"
    assert setting(dropin.read_text(), "TimeoutStartSec") == ["60"]
    vigil = root / "opt" / "vigil" / "venv" / "bin" / "vigil"
    checked = subprocess.run([str(vigil), "check-config", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr

    before = tree(root)
    second = install(source_snapshot, root)
    assert tree(root) == before, "the second run changed the installation"
    assert "signing key" not in second  # kept, not made again

    # The operator's own config is kept; the unit follows its recording roots.
    config.write_text(config.read_text().replace("/var/lib/vigil/recordings", "/var/lib/vigil/footage"))
    mine = config.read_text()
    third = install(source_snapshot, root)
    assert "keeping the existing config /boot/firmware/vigil.yaml" in third
    assert config.read_text() == mine
    assert setting(unit.read_text(), "ReadWritePaths") == ["-/var/lib/vigil/footage"]
    assert (root / "var" / "lib" / "vigil" / "footage").is_dir()
    # The installed unit, pointed at the venv this run made, passes systemd's own check.
    copy = tmp_path / "installed" / "vigil.service"
    copy.parent.mkdir()
    copy.write_text(with_runnable_exec_start(unit.read_text(), vigil))
    verified = systemd_analyze_verify(copy)
    assert verified.returncode == 0 and str(copy) not in verified.stderr, verified.stderr

    # A config that does not validate stops the install with EX_CONFIG and changes nothing.
    installed = tree(root)
    config.write_text("recording:\n  segment_seconds: 0\n")
    refused = subprocess.run(["sh", str(source_snapshot / "deploy" / "install.sh"), "--destdir", str(root),
                              "--source", str(source_snapshot), "--no-systemctl"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == EX_CONFIG, refused.stdout + refused.stderr
    assert "/boot/firmware/vigil.yaml:2: recording.segment_seconds: 0 is out of range" in refused.stderr
    config.write_text(mine)
    assert tree(root) == installed

    footage = recordings / "2026-01-01" / "00" / "20260101T000000Z.mp4"
    footage.parent.mkdir(parents=True)
    footage.write_bytes(b"footage")
    install(source_snapshot, root, "--uninstall")
    assert not unit.exists()
    assert not dropin.exists()
    assert not (root / "opt" / "vigil").exists()
    assert passwd_entry(root, "vigil") is None
    assert "vigil" not in members(root, "video")
    assert footage.read_bytes() == b"footage"
    assert config.read_text() == mine


# --- vigil run under systemd --------------------------------------------------------------------


def test_daemon_tells_systemd_ready_watchdog_and_stopping_and_runs_without_gpio(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    config = tmp_path / "vigil.yaml"
    config.write_text(
        "camera:\n  backend: synthetic\n  width: 160\n  height: 120\n  fps: 30\n"
        f"recording:\n  root: {rec}\n  segment_seconds: 2\n  fragment_seconds: 0.5\n"
        "api:\n  enabled: false\n"
        "gpio:\n  reset_button: 17\n  status_led: 27\n"
    )
    with tempfile.TemporaryDirectory(prefix="vigil-notify-") as sockets:
        address = str(Path(sockets) / "notify")
        systemd = ServiceManagerSocket(address)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000",
               # No pin factory can load, as on a host without GPIO, on any machine.
               "GPIOZERO_PIN_FACTORY": "no-such-factory"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            ready = systemd.wait_for(lambda m: m.get("READY") == "1", timeout=30)
            assert ready[-1]["STATUS"].startswith("recording")
            systemd.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=5)
            assert systemd.wait_for(lambda m: pings([m]) == 1, timeout=5)
            proc.send_signal(signal.SIGTERM)
            systemd.wait_for(lambda m: m.get("STOPPING") == "1", timeout=10)
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            systemd.close()
    assert proc.returncode == 0, output
    assert output.count("GPIO unavailable") == 1, output
    assert segments(rec)
    assert gaps(recorded_numbers(rec)) == []


def test_notify_socket_in_the_abstract_namespace_reaches_the_daemon(tmp_path: Path) -> None:
    # `@name` end to end, with the config's autostart off: ready as soon as the loop runs, idle.
    name = f"vigil-e2e-{uuid.uuid4().hex}"
    systemd = ServiceManagerSocket(b"\0" + name.encode())
    config = tmp_path / "vigil.yaml"
    config.write_text("camera:\n  backend: synthetic\n  width: 160\n  height: 120\n"
                      f"recording:\n  root: {tmp_path / 'rec'}\n  autostart: false\napi:\n  enabled: false\n")
    env = {**os.environ, "NOTIFY_SOCKET": f"@{name}"}
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        ready = systemd.wait_for(lambda m: m.get("READY") == "1", timeout=30)
        assert ready[-1]["STATUS"].startswith("idle")
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for(lambda m: m.get("STOPPING") == "1", timeout=10)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        systemd.close()
    assert proc.returncode == 0, output
