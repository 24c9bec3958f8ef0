"""`vigil verify`: check footage against its signed manifests, offline, straight from a card.

For each file (a segment or a merged hour, given directly, in an hour folder or anywhere
under a root): its manifest's signature (against `--key`, or else the one key every manifest
must share), every fragment's hash (an altered one is named with its time span), and the
chain between consecutive files (a break is reported with the span it covered: footage
deleted or lost in between). A merged hour is checked through its sources' manifests and
signatures, the merged file's own hash, and the frames of each source fragment against the
payload hash recorded while recording (stream copy keeps those bytes).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av

from hw.footage import is_merged_name, is_segment_name, segment_start
from hw.integrity import boxes, canonical, fragment_hash, link, read_manifest, sha256_file


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem `vigil verify` found."""

    kind: str  # altered, break, signature, no_manifest, unreadable
    path: Path
    detail: str
    start: float | None = None
    end: float | None = None

    def describe(self) -> str:
        has_span = self.start is not None and self.end is not None
        span = f" [{_utc(self.start)} - {_utc(self.end)}]" if has_span else ""
        return f"{self.kind}: {self.path}{span}: {self.detail}"


@dataclass
class Report:
    files: int = 0
    fragments: int = 0
    findings: list[Finding] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def is_ok(self) -> bool:
        return not self.findings and self.files > 0


def footage_files(paths: Iterable[Path]) -> list[Path]:
    """Every segment and merged hour among `paths` (files, or folders walked without links)."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            for name in filenames:
                if is_segment_name(name) or is_merged_name(name):
                    full = Path(dirpath) / name
                    if not full.is_symlink():
                        found.append(full)
    return found


def _start_of(path: Path, manifest: dict[str, Any] | None) -> float:
    if manifest is not None and isinstance(manifest.get("start"), (int, float)):
        return float(manifest["start"])
    return segment_start(path.name) or 0.0


def _end_of(path: Path, manifest: dict[str, Any] | None) -> float:
    if manifest is not None and isinstance(manifest.get("end"), (int, float)):
        return float(manifest["end"])
    return _start_of(path, manifest)


def verify(paths: Sequence[Path], *, key: str | None = None, since: float | None = None,
           until: float | None = None) -> Report:
    """Check `paths`; with `since`/`until` (UTC seconds) only files whose span overlaps
    [since, until) are checked, each one whole (and the chain between those)."""
    report = Report()
    items = [(p, read_manifest(p)) for p in footage_files(paths)]
    if since is not None or until is not None:
        lo = float("-inf") if since is None else since
        hi = float("inf") if until is None else until
        kept = [item for item in items if _end_of(*item) >= lo and _start_of(*item) < hi]
        if len(kept) < len(items):
            report.notes.append(f"{len(items) - len(kept)} file(s) outside the span not checked")
        items = kept
    items.sort(key=lambda item: (_start_of(*item), item[0].name))
    trusted = key.lower() if key else None
    chain: list[tuple[Path, dict[str, Any]]] = []  # segment manifests in order, for the chain
    for path, manifest in items:
        report.files += 1
        if manifest is None:
            report.findings.append(Finding("no_manifest", path, "no manifest beside it (or unreadable)"))
            continue
        if manifest.get("kind") == "clip":
            trusted = _check_clip(report, path, manifest, trusted)
            continue  # a clip stands alone: not part of the unit's chain
        trusted = _check_signature(report, path, manifest, trusted)
        if manifest.get("kind") == "merged":
            sources = [m for m in manifest.get("sources") or [] if isinstance(m, dict)]
            for source in sources:
                trusted = _check_signature(report, path, source, trusted, what="source manifest")
            _check_merged(report, path, manifest, sources)
            chain.extend((path, s) for s in sources)
        else:
            _check_segment(report, path, manifest)
            chain.append((path, manifest))
    _check_chain(report, chain)
    if trusted and not key:
        report.notes.append(f"signed by {trusted} (not pinned: pass --key to check it is this unit's)")
    return report


def _check_signature(report: Report, path: Path, manifest: dict[str, Any], trusted: str | None,
                     what: str = "manifest") -> str | None:
    # Here, not at the top: the daemon's scrub imports this module on units that record
    # unsigned, and only a manifest to check needs cryptography (20 MB of RSS).
    from controller.keys import verify_signature

    public = str(manifest.get("public_key") or "")
    signature = str(manifest.get("signature") or "")
    report.keys.add(public)
    try:
        ok = bool(signature) and verify_signature(public, bytes.fromhex(signature), canonical(manifest))
    except ValueError:
        ok = False
    if not ok:
        report.findings.append(Finding("signature", path, f"the {what}'s signature does not check"))
    elif trusted is None:
        return public
    elif public != trusted:
        report.findings.append(Finding("signature", path, f"the {what} is signed by key {public}, "
                                       f"not {trusted}"))
    return trusted


def _expected(entry: dict[str, Any], prev: bytes) -> bytes:
    return link(prev, fragment_hash(bytes.fromhex(entry["head_sha256"]), bytes.fromhex(entry["data_sha256"])),
                float(entry["start"]), float(entry["end"]), int(entry["frames"]))


def _check_links(report: Report, path: Path, manifest: dict[str, Any]) -> bool:
    """The manifest's links follow from each other (its own chain is whole)."""
    prev = bytes.fromhex(manifest["prev_link"])
    for entry in manifest["links"]:
        prev = _expected(entry, prev)
        if prev.hex() != entry["link"]:
            report.findings.append(Finding("altered", path, "the manifest's links do not follow "
                                           "from its hashes", entry["start"], entry["end"]))
            return False
    return True


def _check_segment(report: Report, path: Path, manifest: dict[str, Any]) -> None:
    try:
        data = path.read_bytes()
        links = manifest["links"]
        _check_links(report, path, manifest)
    except (OSError, KeyError, TypeError, ValueError) as err:
        report.findings.append(Finding("unreadable", path, f"{err}"))
        return
    if len(data) != manifest.get("size"):
        report.findings.append(Finding("altered", path, f"{len(data)} bytes, the manifest says "
                                       f"{manifest.get('size')}"))
    for index, entry in enumerate(links):
        report.fragments += 1
        piece = data[entry["offset"]:entry["offset"] + entry["length"]]
        if _piece_digests(piece, frames=entry["frames"]) != (entry["head_sha256"], entry["data_sha256"]):
            what = "the init section (ftyp+moov)" if entry["frames"] == 0 else f"fragment {index}"
            report.findings.append(Finding("altered", path, f"{what} at byte {entry['offset']} "
                                           f"({entry['frames']} frames) does not match its hash",
                                           entry["start"], entry["end"]))


def _piece_digests(piece: bytes, *, frames: int) -> tuple[str, str]:
    if frames == 0:
        return hashlib.sha256(piece).hexdigest(), hashlib.sha256(b"").hexdigest()
    found = list(boxes(piece))
    if len(found) != 2 or found[0].kind != b"moof" or found[1].kind != b"mdat":
        return "", ""  # the boxes themselves were changed
    mdat = found[1]
    return (hashlib.sha256(piece[:mdat.offset + mdat.header]).hexdigest(),
            hashlib.sha256(piece[mdat.offset + mdat.header:]).hexdigest())


def _check_merged(report: Report, path: Path, manifest: dict[str, Any],
                  sources: list[dict[str, Any]]) -> None:
    try:
        digest = sha256_file(path)
    except OSError as err:
        report.findings.append(Finding("unreadable", path, f"{err}"))
        return
    whole_ok = digest == manifest.get("sha256")
    fragments = [(s, e) for s in sources for e in s.get("links") or [] if e["frames"] > 0]
    for source in sources:
        _check_links(report, path, source)
    altered = 0
    try:
        with av.open(str(path)) as container:
            packets = (bytes(p) for p in container.demux(video=0) if p.dts is not None)
            for source, entry in fragments:
                report.fragments += 1
                h = hashlib.sha256()
                for _ in range(int(entry["frames"])):
                    h.update(next(packets, b""))
                if h.hexdigest() != entry["data_sha256"]:
                    altered += 1
                    report.findings.append(Finding(
                        "altered", path, f"the frames of {source.get('file')}'s fragment at byte "
                        f"{entry['offset']} ({entry['frames']} frames) do not match their hash",
                        entry["start"], entry["end"]))
            if next(packets, None) is not None:
                report.findings.append(Finding("altered", path, "holds more frames than its sources"))
                altered += 1
    except (av.FFmpegError, OSError) as err:
        report.findings.append(Finding("unreadable", path, f"does not demux: {err}"))
        return
    if not whole_ok and not altered:
        report.findings.append(Finding("altered", path, "the file's bytes differ from the manifest's "
                                       "hash (its container boxes, not its frames)"))


def _check_clip(report: Report, path: Path, manifest: dict[str, Any], trusted: str | None) -> str | None:
    """An exported clip: its signature, its own hash, its sources' links (each run chains from
    the link named before it), and its frames against those fragments' payload hashes."""
    if manifest.get("signature"):
        trusted = _check_signature(report, path, manifest, trusted, what="clip manifest")
    else:
        report.findings.append(Finding("signature", path, "the clip manifest is unsigned (exported "
                                       "without the unit's key): its origin cannot be proven"))
    try:
        digest = sha256_file(path)
        size = path.stat().st_size
    except OSError as err:
        report.findings.append(Finding("unreadable", path, f"{err}"))
        return trusted
    sources = [s for s in manifest.get("sources") or [] if isinstance(s, dict)]
    fragments: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for source in sources:
        if source.get("links") is None:
            report.notes.append(f"{path}: frames from {source.get('file')} have no recorded manifest "
                                "(the open segment, or footage from before integrity was on)")
            continue
        if source.get("open"):
            report.notes.append(f"{path}: frames from {source.get('file')} were exported while it was "
                                "being written; their links are vouched for by the clip's signature")
        try:
            _check_links(report, path, source)
        except (KeyError, TypeError, ValueError) as err:
            report.findings.append(Finding("unreadable", path, f"clip manifest: {err}"))
            return trusted
        fragments.extend((source, e) for e in source["links"] if int(e["frames"]) > 0)
    altered = 0
    unchecked = 0
    try:
        with av.open(str(path)) as container:
            packets = (bytes(p) for p in container.demux(video=0) if p.dts is not None)
            for source, entry in fragments:
                got = list(itertools.islice(packets, int(entry["frames"])))
                if len(got) < int(entry["frames"]):
                    unchecked += 1  # the clip ends inside this fragment: no hash covers a part
                    continue
                report.fragments += 1
                if hashlib.sha256(b"".join(got)).hexdigest() != entry["data_sha256"]:
                    altered += 1
                    report.findings.append(Finding(
                        "altered", path, f"the frames of {source.get('file')}'s fragment at byte "
                        f"{entry['offset']} ({entry['frames']} frames) do not match their hash",
                        entry["start"], entry["end"]))
            if next(packets, None) is not None and fragments:
                altered += 1
                report.findings.append(Finding("altered", path, "holds frames its manifest does not list"))
    except (av.FFmpegError, OSError) as err:
        report.findings.append(Finding("unreadable", path, f"does not demux: {err}"))
        return trusted
    if unchecked:
        report.notes.append(f"{path}: its last fragment is cut by the clip's end; covered by the "
                            "clip's hash, not by a recorded one")
    if (digest != manifest.get("sha256") or size != manifest.get("size")) and not altered:
        report.findings.append(Finding("altered", path, "the clip's bytes differ from the manifest's "
                                       "hash (its container boxes, not its frames)"))
    return trusted


def _check_chain(report: Report, chain: list[tuple[Path, dict[str, Any]]]) -> None:
    """Each segment must continue from the last link of the one before it."""
    for (_, before), (path, after) in itertools.pairwise(chain):
        try:
            last = before["links"][-1]["link"] if before["links"] else before["prev_link"]
            if after["prev_link"] == last:
                continue
            start, end = float(before["end"]), float(after["start"])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        report.findings.append(Finding(
            "break", path, f"the chain breaks before {after.get('file')}: footage between "
            f"{before.get('file')} and it is missing ({end - start:.1f}s)", start, end))
    if chain:
        first = chain[0][1]
        named = first.get("continues_from") or first.get("prev_link")
        report.notes.append(f"chain starts from link {named} (earlier footage not checked)")


def _utc(t: float | None) -> str:
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
