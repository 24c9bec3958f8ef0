"""V4L2 cameras (USB and CSI bridges on any Linux board), spoken to through the kernel's own API.

The package is split by purpose: `abi` (videodev2.h: structs, request numbers, constants),
`device` (the system-call seam and one capture node), `h264` (Annex-B parsing), `camera`
(V4L2Camera, vigil's Camera over a device) and `probe` (describing nodes, the factory's maker).
Other packages import the maker and the probe from here; everything else from its module.
"""

from hw.v4l2.probe import V4L2Maker, describe_device

__all__ = ["V4L2Maker", "describe_device"]
