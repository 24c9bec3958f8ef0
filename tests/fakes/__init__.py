"""Test doubles for what cannot run on this machine: libcamera's binding (libcamera/, under the
genuine picamera2 that realpicam.py loads), a hand-written picamera2 (picamera2/, the Pi 4
path), V4L2 devices, a durable filesystem, and more.

This file makes pytest import tests/fakes as a package, so collecting these tests does not
put tests/fakes on sys.path for the whole session (which would hand every later
`import picamera2` the fake). Tests that want a fake put it on the path themselves; the
fixture in conftest.py does that for one test at a time.
"""
