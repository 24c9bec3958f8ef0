"""The live playlist's discontinuity numbering stays the same for a fragment across reloads."""

from __future__ import annotations

from controller.surfaces.hls import Entry, LiveSequence, _body, _header


def discontinuity_numbers(playlist: list[str]) -> dict[tuple[str, int], int]:
    """Each fragment's discontinuity sequence number, as a player reads the playlist."""
    found = {}
    number = 0
    for line in playlist:
        if line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE:"):
            number = int(line.split(":")[1])
        elif line == "#EXT-X-DISCONTINUITY":
            number += 1
        elif line.startswith("#EXT-X-BYTERANGE:"):
            offset = int(line.split("@")[1])
        elif line.startswith("hls/"):
            found[(line, offset)] = number
    return found


def test_a_fragment_keeps_its_discontinuity_number_as_the_live_window_slides() -> None:
    # Four segment files of three fragments each; the live window is four fragments wide.
    # file2 carries on file1's stream (the same encoder across a segment boundary): its own
    # init section, no discontinuity; the others start a new stream.
    entries = [Entry(f"2026-01-01/00/file{f}.mp4", 100, 100 + 50 * k, 50, 1.0, starts_file=k == 0,
                     discontinuous=k == 0 and f != 2)
               for f in range(4) for k in range(3)]
    sequence = LiveSequence()
    seen: dict[tuple[str, int], int] = {}
    maps: set[str] = set()
    for end in range(1, len(entries) + 1):
        window = entries[max(0, end - 4):end]
        numbers = [sequence.number(e) for e in window]
        lines = _header(window, sequence=numbers[0],
                        discontinuity_sequence=sequence.discontinuities_before(numbers[0]), ended=False)
        lines += _body(window, first_is_discontinuity=False)
        maps |= {line for line in lines if line.startswith("#EXT-X-MAP:")}
        for key, number in discontinuity_numbers(lines).items():
            assert seen.setdefault(key, number) == number, (key, seen[key], number, lines)
    by_file = {uri: {n for (u, _), n in seen.items() if u == uri} for uri, _ in seen}
    assert by_file == {"hls/2026-01-01/00/file0.mp4": {0}, "hls/2026-01-01/00/file1.mp4": {1},
                       "hls/2026-01-01/00/file2.mp4": {1}, "hls/2026-01-01/00/file3.mp4": {2}}
    assert len(maps) == 4  # every file's own init section, file2's too
