"""Integrity: the fragment chain, signed manifests and `vigil verify`, on real segments."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.cli import main
from controller.keys import create_key, load_or_create_key, public_hex, signer_for
from controller.storage.merge import merge_hour
from controller.storage.retention import RetentionPolicy, enforce_retention
from controller.verify import verify
from hw.footage import hour_folders, list_footage, manifest_path, segments_in
from hw.integrity import Signer, read_manifest
from hw.recovery import recover_partial
from hw.writer import SegmentWriter
from tests.helpers import frame_numbers
from tests.unit.test_writer import MODE, START, packets


@pytest.fixture
def signer() -> Signer:
    return signer_for(Ed25519PrivateKey.generate(), "unit-a")


def record(root: Path, signer: Signer, count: int = 150, wall_start: float = START) -> SegmentWriter:
    w = SegmentWriter(root, width=MODE.width, height=MODE.height, fps=MODE.fps, segment_seconds=1.0,
                      fsync=False, signer=signer)
    for p in packets(count, wall_start=wall_start):
        w.write(p)
    w.close()
    return w


def test_every_closed_segment_has_a_signed_manifest_that_verifies(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path, signer)
    files = [f.path for f in list_footage(tmp_path)]
    assert len(files) == 5 and all(manifest_path(p).is_file() for p in files)
    report = verify([tmp_path], key=signer.public_key)
    assert report.findings == [] and report.is_ok
    assert report.files == 5 and report.fragments == 15  # each 1 s segment: init + two 0.5 s fragments
    assert not any(".manifest" in str(f.path) for f in list_footage(tmp_path))
    # the chain continues from segment to segment
    manifests = [read_manifest(p) for p in files]
    for before, after in itertools.pairwise(manifests):
        assert before is not None and after is not None
        assert after["prev_link"] == before["links"][-1]["link"]
    assert main(["verify", str(tmp_path), "--key", signer.public_key]) == 0


def test_a_flipped_byte_names_that_fragment_and_its_span_only(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path, signer)
    target = [f.path for f in list_footage(tmp_path)][2]
    manifest = read_manifest(target)
    assert manifest is not None
    entry = manifest["links"][2]  # the segment's second fragment
    data = bytearray(target.read_bytes())
    data[entry["offset"] + entry["length"] // 2] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify([tmp_path], key=signer.public_key)
    assert len(report.findings) == 1, report.findings
    finding = report.findings[0]
    assert (finding.kind, finding.path) == ("altered", target)
    assert (finding.start, finding.end) == (entry["start"], entry["end"])
    assert main(["verify", str(tmp_path)]) == 1


def test_a_segment_deleted_mid_hour_is_a_break_with_its_span(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path, signer)
    files = [f.path for f in list_footage(tmp_path)]
    before, gone, after = (read_manifest(p) for p in files[1:4])
    assert before and gone and after
    files[2].unlink()
    manifest_path(files[2]).unlink()
    report = verify([files[0].parent], key=signer.public_key)
    assert [f.kind for f in report.findings] == ["break"]
    assert report.findings[0].path == files[3]
    assert (report.findings[0].start, report.findings[0].end) == (before["end"], after["start"])
    assert report.findings[0].start <= gone["start"] and gone["end"] <= report.findings[0].end


def test_a_segment_replaced_by_another_recording_fails_the_signature(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path / "a", signer)
    forger = signer_for(Ed25519PrivateKey.generate(), "unit-a")
    record(tmp_path / "b", forger)  # the same length, same times, another key
    a = [f.path for f in list_footage(tmp_path / "a")][1]
    b = [f.path for f in list_footage(tmp_path / "b")][1]
    assert a.stat().st_size != 0 and a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")
    shutil.copy(b, a)
    shutil.copy(manifest_path(b), manifest_path(a))
    report = verify([tmp_path / "a"], key=signer.public_key)
    kinds = {f.kind for f in report.findings if f.path == a}
    assert "signature" in kinds, report.findings
    # without --key the odd one out is still caught: one unit, one key
    assert any(f.kind == "signature" for f in verify([tmp_path / "a"]).findings)
    # and a forged manifest (hashes of the new file, the old key copied in) does not check
    m = read_manifest(a)
    assert m is not None
    m["public_key"] = signer.public_key
    manifest_path(a).write_text(json.dumps(m))
    assert any(f.kind == "signature" and f.path == a
               for f in verify([tmp_path / "a"], key=signer.public_key).findings)


def test_a_recovered_partial_verifies_up_to_its_last_whole_fragment(tmp_path: Path, signer: Signer) -> None:
    w = SegmentWriter(tmp_path, width=MODE.width, height=MODE.height, fps=MODE.fps, segment_seconds=60,
                      fsync=False, signer=signer)
    for p in packets(50):
        w.write(p)
    head = w.chain.head
    assert w.open_path is not None
    on_disk = w.open_path.read_bytes()  # what a kill -9 now leaves: the open fragment is not there
    partial = w.abandon()
    assert partial is not None
    partial.write_bytes(on_disk)
    with open(partial, "ab") as f:
        f.write(b"\x00\x00\x10\x00moof" + b"\x01" * 100)  # a torn fragment after the whole ones
    result = recover_partial(partial, signer=signer)
    assert result.result is not None and result.fragments == 3
    manifest = read_manifest(result.result)
    assert manifest is not None
    assert manifest["links"][-1]["link"] == head.hex()  # the writer's chain, rebuilt exactly
    assert sum(e["frames"] for e in manifest["links"]) == len(frame_numbers(result.result)) == 45
    assert verify([tmp_path], key=signer.public_key).is_ok


def test_a_merged_hour_verifies_against_the_same_key(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path, signer)
    (hour,) = hour_folders(tmp_path)
    (merged,) = merge_hour(hour, fsync=False, signer=signer)
    assert not hour.path.exists()  # the segments and their manifests are gone with them
    manifest = read_manifest(merged.path)
    assert manifest is not None and manifest["kind"] == "merged" and len(manifest["sources"]) == 5
    report = verify([tmp_path], key=signer.public_key)
    assert report.is_ok, report.findings
    assert report.fragments == 10
    # a changed frame in the merged hour is found and named by its source fragment's span
    data = bytearray(merged.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    merged.path.write_bytes(bytes(data))
    findings = verify([tmp_path], key=signer.public_key).findings
    assert len(findings) == 1 and findings[0].kind == "altered" and findings[0].start is not None


def test_retention_deletes_the_manifest_with_its_segment(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path, signer)
    (hour,) = hour_folders(tmp_path)
    enforce_retention([tmp_path], RetentionPolicy(retention_days=1, reserve_mb=0, reserve_percent=0),
                      now=START + 10 * 86400)
    assert not segments_in(hour.path)
    assert not list(tmp_path.rglob("*.manifest.json"))


def test_the_key_is_made_once_owner_only_and_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "state" / "integrity.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_hex(load_or_create_key(path)) == public_hex(key)
    with pytest.raises(FileExistsError):
        create_key(path)
    config = tmp_path / "vigil.yaml"
    config.write_text(f"integrity:\n  key_file: {path}\n")
    assert main(["key", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == public_hex(key)


def test_verify_since_until_checks_only_the_footage_in_the_span(tmp_path: Path, signer: Signer) -> None:
    record(tmp_path, signer)
    files = [f.path for f in list_footage(tmp_path)]
    target = files[4]  # the last second: altered, outside the span asked for below
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert verify([tmp_path], key=signer.public_key).findings  # the whole root: found
    inside = verify([tmp_path], key=signer.public_key, since=START + 1.2, until=START + 2.8)
    assert inside.is_ok, inside.findings
    assert inside.files == 2  # the segments of seconds 1 and 2 only
    since, until = "2026-09-21T14:13:21.2Z", "2026-09-21T14:13:22.8"
    assert main(["verify", str(tmp_path), "--since", since, "--until", until]) == 0
    assert main(["verify", str(tmp_path), "--since", since]) == 1  # reaches the altered one
    assert main(["verify", str(tmp_path), "--since", "yesterday"]) == 2
    assert main(["verify", str(tmp_path), "--since", until, "--until", since]) == 2


def test_an_exported_clip_verifies_and_a_flipped_byte_in_it_is_reported(
    tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str],
) -> None:
    from controller.surfaces.export import clip_manifest, export_clip
    from hw.integrity import write_manifest

    root = tmp_path / "rec"
    record(root, signer, count=300)  # 10 s of 1 s segments
    (hour,) = hour_folders(root)
    merge_hour(hour, fsync=False, signer=signer)  # the clip crosses a merged hour's sources
    record(root, signer, count=90, wall_start=START + 10)
    out = tmp_path / "clip.mp4"
    work = tmp_path / "work"
    work.mkdir()
    clip = export_clip(root, START + 8.2, START + 11.7, out, workdir=work)
    manifest = clip_manifest(clip, signer)
    write_manifest(out, manifest, fsync=False)
    files = [s["file"] for s in manifest["sources"]]
    assert len(files) == 4 and len(set(files)) == 4, files  # seconds 8, 9 (merged) and 10, 11
    assert all(s["links"] and s["signature"] for s in manifest["sources"])
    report = verify([out], key=signer.public_key)
    assert report.is_ok, [f.describe() for f in report.findings]
    assert report.fragments >= 6  # the clip's whole fragments, checked frame by frame
    # another key: the signature does not check against it
    other = signer_for(Ed25519PrivateKey.generate(), "unit-a")
    assert any(f.kind == "signature" for f in verify([out], key=other.public_key).findings)
    # one flipped byte in the clip's frames: reported as altered with the fragment's span
    data = bytearray(out.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    out.write_bytes(bytes(data))
    findings = verify([out], key=signer.public_key).findings
    assert [f.kind for f in findings] == ["altered"], findings
    assert findings[0].start is not None and START + 8 <= findings[0].start < START + 12
    assert main(["verify", str(out), "--key", signer.public_key]) == 1
    capsys.readouterr()


def test_vigil_export_writes_the_clip_manifest_beside_the_file(
    tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "integrity.key"
    unit = signer_for(create_key(key), "unit-a")
    root = tmp_path / "rec"
    record(root, unit)
    config = tmp_path / "vigil.yaml"
    config.write_text(f"unit:\n  id: unit-a\nintegrity:\n  key_file: {key}\n")
    out = tmp_path / "clip.mp4"
    assert main(["export", "--root", str(root), "--config", str(config), "--start",
                 "2026-09-21T14:13:21Z", "--duration", "2", "-o", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest is not None and manifest["kind"] == "clip" and manifest["file"] == "clip.mp4"
    assert manifest["public_key"] == unit.public_key
    assert main(["verify", str(out), "--key", unit.public_key]) == 0
    # never over an existing manifest
    out.unlink()
    assert main(["export", "--root", str(root), "--config", str(config), "--start",
                 "2026-09-21T14:13:21Z", "--duration", "2", "-o", str(out)]) == 1
    capsys.readouterr()


def test_the_scrub_raises_one_alert_per_altered_file(tmp_path: Path, signer: Signer) -> None:
    import threading

    from controller.core.alerts import AlertLog
    from controller.storage.housekeeping import StorageHousekeeper, StorageSettings

    record(tmp_path, signer)
    files = [f.path for f in list_footage(tmp_path)]
    target = files[3]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    alerts = AlertLog()
    raised: list[object] = []
    seen = threading.Event()

    def when_alert(alert: object) -> None:
        raised.append(alert)
        seen.set()

    alerts.when_alert = when_alert
    settings = StorageSettings(merge="off", retention=RetentionPolicy(retention_days=0, reserve_mb=0,
                               reserve_percent=0), sample_seconds=0.01, scrub_seconds=0.001, signer=signer)
    keeper = StorageHousekeeper(
        settings, roots=lambda: [tmp_path], active_root=lambda: tmp_path, open_segments=list,
        when_footage_altered=lambda p, d: alerts.record("footage_altered", f"{p}: {d}"))
    keeper.start()
    try:
        assert seen.wait(30)
        with keeper._done:  # several whole scrubs later, still the one alert
            assert keeper._done.wait_for(lambda: keeper.scrubs_done >= 3, 30)
    finally:
        assert keeper.stop(5)
    assert [a.kind for a in alerts.recent(10)] == ["footage_altered"]
    assert str(target) in alerts.recent(10)[0].message
    assert keeper.scrubbed_files >= 3 * len(files)


def test_a_restart_resumes_the_scrub_where_it_stopped_and_does_not_alert_twice(
        tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scrub's progress is kept in the state directory (one file checked per pass here):
    a second housekeeper, as after a restart, checks only the files the first did not, and
    the altered file the first reported raises no second alert."""
    import time

    from controller.storage import housekeeping
    from controller.storage.housekeeping import StorageHousekeeper, StorageSettings
    from controller.storage.scrubstate import ScrubState

    root = tmp_path / "recordings"
    record(root, signer, count=300)  # ten 1 s segments
    files = sorted(f.path for f in list_footage(root))
    assert len(files) == 10
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    files[0].write_bytes(bytes(data))
    monkeypatch.setattr(housekeeping, "SCRUB_BYTES_PER_PASS", 1)  # a pass ends after each file
    state = tmp_path / "state" / "scrub.json"
    policy = RetentionPolicy(retention_days=0, reserve_mb=0, reserve_percent=0)

    def keeper(scrub_seconds: float, altered: list[str]) -> StorageHousekeeper:
        settings = StorageSettings(merge="off", retention=policy, sample_seconds=0.001,
                                   scrub_seconds=scrub_seconds, signer=signer, scrub_state=state)
        return StorageHousekeeper(settings, roots=lambda: [root], active_root=lambda: root,
                                  open_segments=list,
                                  when_footage_altered=lambda p, d: altered.append(str(p)))

    def wait(predicate: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.005)

    first_altered: list[str] = []
    first = keeper(0.001, first_altered)
    # The fifth file's check waits for the stop (a restart arriving mid-scrub), so the first
    # housekeeper checks exactly five files whatever the machine's speed.
    from controller import verify as verifying

    real_verify = verifying.verify
    calls: list[int] = []

    def verify_then_wait(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 5:
            assert first._stop.wait(30)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(verifying, "verify", verify_then_wait)
    first.start()
    try:
        wait(lambda: len(calls) >= 5, "five files scrubbed")
    finally:
        assert first.stop(5)
    monkeypatch.setattr(verifying, "verify", real_verify)
    checked = first.scrubbed_files
    assert checked == 5 and first.scrubs_done == 0
    saved = ScrubState.load(state)
    assert saved.position == str(files[checked - 1])  # the last file the first one checked
    assert first_altered == [str(files[0])] and saved.altered == [str(files[0])]

    second_altered: list[str] = []
    second = keeper(3600, second_altered)  # not due for an hour: only the interrupted scrub goes on
    second.start()
    try:
        wait(lambda: second.scrubs_done >= 1, "the resumed scrub to finish")
    finally:
        assert second.stop(5)
    assert second.scrubbed_files == len(files) - checked  # the rest, none twice
    assert second_altered == []  # files[0] was reported before the restart
    done = ScrubState.load(state)
    assert done.position is None and done.next_due is not None and done.next_due > time.time() + 3000
    assert done.altered == [str(files[0])]


def test_clip_frames_from_the_open_segment_carry_the_links_its_manifest_lists_at_close(
        tmp_path: Path, signer: Signer) -> None:
    """A clip reaching into the segment still being written lists that segment's fragments
    with chain links (marked open), verifies, and the links are the ones the segment's own
    signed manifest lists once it closes."""
    from controller.surfaces.export import clip_manifest, export_clip
    from hw.integrity import write_manifest

    root = tmp_path / "rec"
    record(root, signer, count=90)  # seconds 0-2, closed
    writer = SegmentWriter(root, width=MODE.width, height=MODE.height, fps=MODE.fps, segment_seconds=60.0,
                           fsync=False, signer=signer, chain=None)
    writer.chain.head = bytes.fromhex(read_manifest(sorted(f.path for f in list_footage(root))[-1])
                                      ["links"][-1]["link"])  # one daemon's chain goes on
    for p in packets(120, wall_start=START + 3):  # seconds 3-7, the open segment
        writer.write(p)
    assert writer.open_path is not None and writer.open_path.name.endswith(".partial")
    out = tmp_path / "clip.mp4"
    work = tmp_path / "work"
    work.mkdir()
    clip = export_clip(root, START + 1.2, START + 5.2, out, workdir=work)
    manifest = clip_manifest(clip, signer)
    write_manifest(out, manifest, fsync=False)
    opened = [s for s in manifest["sources"] if s.get("open")]
    assert len(opened) == 1 and opened[0]["links"] and opened[0]["signature"] is None
    assert "still being written" in opened[0]["why"]
    assert all(s["links"] for s in manifest["sources"])  # no frame of the clip is unlinked
    report = verify([out], key=signer.public_key)
    assert report.is_ok, [f.describe() for f in report.findings]
    assert any("were exported while it was being written" in n for n in report.notes)
    open_name = opened[0]["file"]
    writer.close()
    closed = read_manifest(next(f.path for f in list_footage(root) if f.path.name == open_name))
    assert closed is not None
    recorded = {e["link"]: e for e in closed["links"]}
    assert all(recorded.get(e["link"]) == e for e in opened[0]["links"])  # the same links, byte for byte
    # A forged link in the open part is caught.
    opened[0]["links"][-1]["data_sha256"] = "0" * 64
    write_manifest(out, manifest, fsync=False)
    assert not verify([out]).is_ok
