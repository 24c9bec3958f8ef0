"""H.264 Annex-B byte streams parsed: NAL units found, bare IDRs completed with the latest SPS/PPS."""

from __future__ import annotations

NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
START_CODE = b"\x00\x00\x01"


def nal_units(data: bytes) -> list[tuple[int, int, int]]:
    """(type, start, end) of every NAL unit in an Annex-B byte string, start past the start code."""
    starts = []
    pos = data.find(START_CODE)
    while pos >= 0:
        starts.append(pos + 3)
        pos = data.find(START_CODE, pos + 3)
    units = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        if i + 1 < len(starts) and end > start and data[end - 1] == 0:
            end -= 1  # the zero byte of a four-byte start code belongs to the next unit
        if start < len(data):
            units.append((data[start] & 0x1F, start, end))
    return units


def nal_types(data: bytes) -> list[int]:
    return [kind for kind, _, _ in nal_units(data)]


class ParameterSets:
    """The stream's latest SPS and PPS, to put in front of IDRs that come without them."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.inserted = 0

    def complete(self, data: bytes) -> tuple[bytes, bool]:
        """(the access unit, ready for the segment writer; whether a segment may start with it).

        An IDR before any SPS/PPS was seen cannot start a decodable segment, so it does not
        count as a keyframe; the writer skips ahead to the next one.
        """
        units = nal_units(data)
        kinds = {kind for kind, _, _ in units}
        for kind, start, end in units:
            if kind == NAL_SPS:
                self.sps = data[start:end]
            elif kind == NAL_PPS:
                self.pps = data[start:end]
        if NAL_IDR not in kinds or not (self.sps and self.pps):
            return data, False
        if NAL_SPS not in kinds or NAL_PPS not in kinds:
            # A camera that sends its headers once: every segment must start decodable.
            self.inserted += 1
            data = b"\x00\x00\x00\x01" + self.sps + b"\x00\x00\x00\x01" + self.pps + data
        return data, True
