"""Where encoded frames go (picamera2.outputs): the Output base class and FileOutput.

The real package also has CircularOutput, CircularOutput2, FfmpegOutput and PyavOutput;
the fake leaves them out, so importing them fails loudly.
"""

from .fileoutput import FileOutput
from .output import Output

__all__ = ["FileOutput", "Output"]
