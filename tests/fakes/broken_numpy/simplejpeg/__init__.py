"""simplejpeg's compiled module as it fails against a numpy it was not built for.

The message is Cython's own check (seen verbatim in raspberrypi/picamera2 #1211).
"""

raise ValueError("numpy.dtype size changed, may indicate binary incompatibility. "
                 "Expected 96 from C header, got 88 from PyObject")
