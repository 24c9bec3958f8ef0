"""A fake of the picamera2 library for tests: the subset vigil uses, with real H.264.

Put tests/fakes on sys.path and `import picamera2` gets this package; drive the fake
cameras through `picamera2._fake` (install_camera, faults, history). Nothing here touches
hardware.

Every signature and behaviour was copied from the real library's source, as stored for
raspberrypi/picamera2 (file @ commit):
- picamera2/picamera2.py @ ec9ab36d87979f4ea4fc247772da39f99f79d5d2 (Picamera2)
- picamera2/job.py @ aeb3ff4fd1d9f0067b13e856cc113cc6a8249668 (Job, TimeoutError on wait)
- picamera2/controls.py @ 9c44552836aa721b730fafd904923b39ddb86201 (FrameRate control)
- picamera2/platform.py @ 03b3c63616ec0aefceaf68b9ccd56eb9cc63e133 (Platform.VC4 / PISP)
- picamera2/encoders/__init__.py @ 1bc461b9c167efc824f57464debe8b45a4cfe1c9 (H264Encoder
  is LibavH264Encoder where there is no hardware encoder, i.e. on a Pi 5)
- picamera2/encoders/encoder.py @ bf814e5b1c118893af3368c5649c4b91044adac5 (Encoder,
  Quality, microsecond timestamps from the first frame)
- picamera2/encoders/h264_encoder.py @ c2f8ab5ce55f3b240fe3db2471a47bfec72d8399
- picamera2/encoders/v4l2_encoder.py @ d547f58f363536efe8c8b92b747447d0da347771
- picamera2/encoders/libav_h264_encoder.py @ c242ace87d002b75914e05a28f47cfc1598ef514
- picamera2/outputs/output.py @ ee44f64ab3de7d5f7627cae3b881d1f0ef77d572 (Output)
- picamera2/outputs/fileoutput.py @ bf814e5b1c118893af3368c5649c4b91044adac5 (FileOutput)
- picamera2/request.py (Helpers.make_array: YUV420 arrays are (height*3//2, stride))
Elsewhere: raspberrypi/libcamera src/libcamera/camera.cpp (Camera::stop returns -ENODEV
for a disconnected camera), the bcm2835-codec driver (H.264 I-period default 60), and
raspberrypi/picamera2 issues #1264 and #1275 (stop_recording() stuck after "Camera
frontend has timed out!").
"""

import libcamera

from .picamera2 import Picamera2, Preview


def _transforms_eq(t1: libcamera.Transform, t2: libcamera.Transform) -> bool:
    return bool(t1.hflip == t2.hflip and t1.vflip == t2.vflip and t1.transpose == t2.transpose)


def _colour_spaces_eq(c1: libcamera.ColorSpace, c2: libcamera.ColorSpace) -> bool:
    return bool(c1.primaries == c2.primaries and c1.transferFunction == c2.transferFunction
                and c1.ycbcrEncoding == c2.ycbcrEncoding and c1.range == c2.range)


# The binding's Transform and ColorSpace have no ==; picamera2's __init__.py adds these two
# (raspberrypi/picamera2 picamera2/__init__.py @ v0.3.31, 4a8e3d93546470e411b0ac637d174259e8a79142).
libcamera.Transform.__eq__ = _transforms_eq  # type: ignore[method-assign,assignment]
libcamera.ColorSpace.__eq__ = _colour_spaces_eq  # type: ignore[method-assign,assignment]

__all__ = ["Picamera2", "Preview"]
