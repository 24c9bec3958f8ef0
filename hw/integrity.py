"""Footage you can prove: a SHA-256 chain over every fragment, and signed manifests.

While a segment is written, each fragment the writer makes durable (the bytes between the
previous durable size and the new one: one `moof` + `mdat`, and the `ftyp` + `moov` init
section before the first) is hashed, read back from the page cache right after its fsync.
Nothing is added per frame. Each fragment becomes one link of a chain:

    fragment_hash = SHA-256(SHA-256(moof box + mdat header) || SHA-256(mdat payload))
    link          = SHA-256(prev_link || fragment_hash || start || end || frames)

with `start`, `end` the fragment's UTC span (big-endian doubles) and `frames` its frame
count (big-endian uint32); the init section is a link of 0 frames. The chain continues from
segment to segment for the unit's life; a restart starts from the last link it can read
back (the newest manifest's) and names it in `continues_from`. Each segment's opening link
is also written into the segment itself (the `vigil_chain` tag) so that start-up recovery
can rebuild the manifest of a segment a crash left unfinished.

The manifest sits beside its file, `NAME.mp4.manifest.json` (hw.footage names it), written
crash-safely (`.partial`, fsync, rename, folder fsync) before the segment takes its closed
name. It lists the links, the unit id, the span and the file size, and is signed with the
unit's Ed25519 key over its canonical JSON (sorted keys, no spaces, without `signature`).
A merged hour's manifest holds its source segments' manifests unchanged (so their links
and signatures still check) plus the merged file's own SHA-256; its frames are checked
against the sources' `mdat` payload hashes, which stream copy keeps byte for byte.

Signing needs the private key, which hw never reads: the daemon passes a `Signer` in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hw.footage import manifest_path

FORMAT = "vigil-manifest/1"
CHAIN_TAG = "vigil_chain"
GENESIS = bytes(32)  # the link before the first link a unit ever made
HEADER_BYTES = 8
LARGE_HEADER_BYTES = 16
READ_CHUNK_BYTES = 1 << 20
TIME_BASE = 90_000  # the writer's mux time base: spans are computed from its ticks


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs manifests: the unit's id, its public key (hex, raw 32 bytes) and a sign callable."""

    unit: str
    public_key: str
    sign: Callable[[bytes], bytes]


class Chain:
    """The chain head, shared by every writer of one daemon (thread-safe)."""

    def __init__(self, head: bytes = GENESIS, continues_from: bytes | None = None) -> None:
        self._lock = threading.Lock()
        self.head = head
        # Named in the first manifest written after a start: the link read back at start-up.
        self.continues_from = continues_from

    def __repr__(self) -> str:
        return f"<Chain head={self.head.hex()[:16]}>"

    def take_continues_from(self) -> bytes | None:
        with self._lock:
            value, self.continues_from = self.continues_from, None
            return value


def link(prev: bytes, fragment_hash: bytes, start: float, end: float, frames: int) -> bytes:
    return hashlib.sha256(prev + fragment_hash + struct.pack(">ddI", start, end, frames)).digest()


def fragment_hash(head_sha256: bytes, data_sha256: bytes) -> bytes:
    return hashlib.sha256(head_sha256 + data_sha256).digest()


@dataclass(frozen=True, slots=True)
class Box:
    kind: bytes
    offset: int
    size: int
    header: int  # 8, or 16 for a 64-bit size


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The whole top-level boxes of `data[start:end]`; stops at a torn one."""
    end = len(data) if end is None else end
    offset = start
    while offset + HEADER_BYTES <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = HEADER_BYTES
        if size == 1 and offset + LARGE_HEADER_BYTES <= end:
            size = struct.unpack_from(">Q", data, offset + HEADER_BYTES)[0]
            header = LARGE_HEADER_BYTES
        if size < header or offset + size > end:
            return
        yield Box(kind, offset, size, header)
        offset += size


def sample_count(moof: bytes) -> int:
    """Frames in one fragment: the sum of its `trun` sample counts (moof > traf > trun)."""
    total = 0
    for traf in boxes(moof, HEADER_BYTES):
        if traf.kind != b"traf":
            continue
        for trun in boxes(moof, traf.offset + traf.header, traf.offset + traf.size):
            if trun.kind == b"trun":
                total += struct.unpack_from(">I", moof, trun.offset + trun.header + 4)[0]
    return total


@dataclass(frozen=True, slots=True)
class Piece:
    """One hashed range of a segment: the init section (frames 0) or a fragment."""

    offset: int
    length: int
    head_sha256: bytes
    data_sha256: bytes
    frames: int  # counted from the fragment's own `trun` boxes

    @property
    def hash(self) -> bytes:
        return fragment_hash(self.head_sha256, self.data_sha256)


def pieces(data: bytes, base_offset: int, *, with_init: bool) -> tuple[list[Piece], int]:
    """Hash the init section (when `with_init`) and each whole moof+mdat pair in `data`.

    Returns the pieces and how many bytes of `data` they cover (what follows is torn).
    """
    out: list[Piece] = []
    covered = 0
    need_init = with_init
    moof: Box | None = None
    for box in boxes(data):
        if box.kind == b"moof":
            if need_init:
                need_init = False
                if box.offset:
                    init = data[:box.offset]
                    out.append(Piece(base_offset, box.offset, hashlib.sha256(init).digest(),
                                     hashlib.sha256(b"").digest(), 0))
                    covered = box.offset
            moof = box
        elif box.kind == b"mdat" and moof is not None:
            head = data[moof.offset:box.offset + box.header]
            payload = memoryview(data)[box.offset + box.header:box.offset + box.size]
            out.append(Piece(base_offset + moof.offset, box.offset + box.size - moof.offset,
                             hashlib.sha256(head).digest(), hashlib.sha256(payload).digest(),
                             sample_count(data[moof.offset:moof.offset + moof.size])))
            covered = box.offset + box.size
            moof = None
    return out, covered


@dataclass
class ManifestBuilder:
    """The links of one segment as it is written; `finish` makes its signed manifest."""

    prev_link: bytes
    base_wallclock: float
    links: list[dict[str, Any]] = field(default_factory=list)
    head: bytes = b""

    def __post_init__(self) -> None:
        self.head = self.prev_link

    def add(self, piece: Piece, start_ticks: int, end_ticks: int) -> None:
        frames = piece.frames
        start = self.base_wallclock + start_ticks / TIME_BASE
        end = self.base_wallclock + end_ticks / TIME_BASE
        self.head = link(self.head, piece.hash, start, end, frames)
        self.links.append({
            "offset": piece.offset, "length": piece.length, "head_sha256": piece.head_sha256.hex(),
            "data_sha256": piece.data_sha256.hex(), "start": start, "end": end, "frames": frames,
            "link": self.head.hex(),
        })

    def manifest(self, file: Path, size: int, signer: Signer, continues_from: bytes | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": FORMAT, "kind": "segment", "unit": signer.unit, "file": file.name, "size": size,
            "start": self.links[0]["start"] if self.links else self.base_wallclock,
            "end": self.links[-1]["end"] if self.links else self.base_wallclock,
            "prev_link": self.prev_link.hex(),
            "continues_from": continues_from.hex() if continues_from is not None else None,
            "links": self.links,
        }
        return sign_manifest(body, signer)


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes a manifest's signature covers: its JSON without `signature`, sorted, compact."""
    return json.dumps({k: v for k, v in body.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode()


def sign_manifest(body: dict[str, Any], signer: Signer) -> dict[str, Any]:
    body = {**body, "public_key": signer.public_key}
    body["signature"] = signer.sign(canonical(body)).hex()
    return body


def write_manifest(footage: Path, manifest: dict[str, Any], *, fsync: bool = True) -> Path:
    """Write `footage`'s manifest beside it: `.partial`, fsync, rename, folder fsync."""
    from hw.writer import fsync_directory  # hw.writer builds on this module

    final = manifest_path(footage)
    temp = final.with_name(final.name + ".partial")
    data = json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False).encode()
    with open(temp, "wb") as f:
        f.write(data)
        if fsync:
            os.fsync(f.fileno())
    os.replace(temp, final)
    if fsync:
        fsync_directory(final.parent)
    return final


def read_manifest(footage: Path) -> dict[str, Any] | None:
    """The manifest beside `footage`, or None when there is none or it is not JSON."""
    try:
        with open(manifest_path(footage), "rb") as f:
            data = json.loads(f.read(64 * 1024 * 1024))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def last_link(manifest: dict[str, Any]) -> bytes | None:
    """The last link a manifest holds (a merged hour's: its last source's)."""
    with contextlib.suppress(KeyError, TypeError, ValueError, IndexError):
        if manifest.get("kind") == "merged":
            return last_link(manifest["sources"][-1])
        links = manifest["links"]
        return bytes.fromhex(links[-1]["link"]) if links else bytes.fromhex(manifest["prev_link"])
    return None


def read_file_range(f: BinaryIO, offset: int, length: int) -> bytes:
    return os.pread(f.fileno(), length, offset)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def chain_tag(prev: bytes) -> str:
    return prev.hex()


def join_links(manifests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every link of `manifests` in order (a merged hour's through its sources)."""
    out: list[dict[str, Any]] = []
    for m in manifests:
        if m.get("kind") == "merged":
            out.extend(join_links(m.get("sources") or []))
        else:
            out.extend(m.get("links") or [])
    return out


def newest_link(roots: Iterable[Path]) -> bytes | None:
    """The last link of the newest manifest under `roots` (by footage start), or None."""
    from hw.footage import list_footage

    found: list[tuple[float, dict[str, Any]]] = []
    for root in roots:
        for item in reversed(list_footage(Path(root))):
            manifest = read_manifest(item.path)
            if manifest is not None and isinstance(manifest.get("end"), (int, float)):
                found.append((float(manifest["end"]), manifest))
                break  # the newest footage of this root that has one
    if not found:
        return None
    return last_link(max(found, key=lambda f: f[0])[1])
