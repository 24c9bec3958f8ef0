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
    # Three segment files of three fragments each; the live window is four fragments wide.
    entries = [Entry(f"2026-01-01/00/file{f}.mp4", 100, 100 + 50 * k, 50, 1.0, starts_file=k == 0)
               for f in range(3) for k in range(3)]
    sequence = LiveSequence()
    seen: dict[tuple[str, int], int] = {}
    for end in range(1, len(entries) + 1):
        window = entries[max(0, end - 4):end]
        numbers = [sequence.number(e) for e in window]
        lines = _header(window, sequence=numbers[0],
                        discontinuity_sequence=sequence.discontinuities_before(numbers[0]), ended=False)
        lines += _body(window, first_is_discontinuity=False)
        for key, number in discontinuity_numbers(lines).items():
            assert seen.setdefault(key, number) == number, (key, seen[key], number, lines)
    # file0's fragments are 0, file1's 1, file2's 2
    assert sorted(set(seen.values())) == [0, 1, 2]
