"""Test doubles for libraries that cannot run on this machine (see picamera2/).

This file makes pytest import tests/fakes as a package, so collecting these tests does not
put tests/fakes on sys.path for the whole session (which would hand every later
`import picamera2` the fake). Tests that want a fake put it on the path themselves; the
fixture in conftest.py does that for one test at a time.
"""
