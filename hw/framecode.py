"""The synthetic camera's frame-number code: draw it into a frame, read it back from one.

The code is a contract (ARCHITECTURE.md): the top 16 pixel rows carry the frame's sequence
number n as 32 cells across the width; cell i spans columns floor(i*W/32) to
floor((i+1)*W/32)-1 and is white when bit 31-i of n is set, black otherwise. Anyone can
decode a recording and check that no frame was lost or repeated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CODE_ROWS = 16
CODE_BITS = 32
WHITE_LUMA = 255
BLACK_LUMA = 0


def cell_bounds(width: int) -> list[tuple[int, int]]:
    """Column ranges [start, stop) of the 32 cells for a frame `width` pixels wide."""
    return [(i * width // CODE_BITS, (i + 1) * width // CODE_BITS) for i in range(CODE_BITS)]


def bit_pattern(n: int, width: int) -> np.ndarray:
    """One code row for number n: a uint8 vector of `width` luma values."""
    import numpy as np  # only a backend that makes arrays pays for numpy
    if not 0 <= n < 2**CODE_BITS:
        raise ValueError(f"frame number {n} does not fit in {CODE_BITS} bits")
    row = np.empty(width, dtype=np.uint8)
    for i, (start, stop) in enumerate(cell_bounds(width)):
        row[start:stop] = WHITE_LUMA if (n >> (CODE_BITS - 1 - i)) & 1 else BLACK_LUMA
    return row


def draw(luma: np.ndarray, n: int) -> None:
    """Write number n into the top rows of a luma plane (H, W) in place."""
    luma[:CODE_ROWS, :] = bit_pattern(n, luma.shape[1])


def read(luma: np.ndarray) -> int:
    """The number carried by a decoded luma plane (H, W); robust to compression noise.

    Each cell is sampled away from its edges and rows 2..13, where H.264 blocks keep the
    flat black or white intact, and thresholded at mid grey.
    """
    width = luma.shape[1]
    band = luma[2 : CODE_ROWS - 2, :]
    n = 0
    for start, stop in cell_bounds(width):
        margin = (stop - start) // 4  # 0 for cells 3 px or narrower: use all of them
        cell = band[:, start + margin : stop - margin]
        n = (n << 1) | int(cell.mean() > 127)
    return n


def read_video_frame(frame: object) -> int:
    """The number carried by a decoded PyAV VideoFrame (any pixel format)."""
    luma = frame.to_ndarray(format="gray")  # type: ignore[attr-defined]
    return read(luma)
