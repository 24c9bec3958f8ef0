"""The fake libcamera binding on its own: the binding's rules, buffers, frames and faults."""

from __future__ import annotations

import mmap
import os
import select
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hw import framecode
from tests.fakes import libcamera
from tests.fakes.libcamera import system
from tests.fakes.libcamera._libcamera import py_to_control_value

WAIT_S = 5.0


@pytest.fixture
def imx708() -> Iterator[system.FakeCameraHardware]:
    system.SYSTEM.reset()
    yield system.SYSTEM.install_camera("imx708", dequeue_timeout_s=0.1)
    system.SYSTEM.reset()


def configured(cm: Any, width: int = 160, height: int = 120, *, sensor: tuple[int, int] | None = None,
               bit_depth: int = 10) -> tuple[Any, Any]:
    camera = cm.cameras[0]
    camera.acquire()
    config = camera.generate_configuration([libcamera.StreamRole.Viewfinder])
    stream_config = config.at(0)
    stream_config.size = libcamera.Size(width, height)
    stream_config.pixel_format = libcamera.PixelFormat("YUV420")
    stream_config.buffer_count = 3
    if sensor is not None:
        config.sensor_config = libcamera.SensorConfiguration()
        config.sensor_config.output_size = libcamera.Size(*sensor)
        config.sensor_config.bit_depth = bit_depth
    camera.configure(config)
    return camera, config


def wait_ready(cm: Any) -> list[Any]:
    ready, _, _ = select.select([cm.event_fd], [], [], WAIT_S)
    assert ready, "no request completed"
    return cm.get_ready_requests()


def test_the_state_rules_and_their_errors(imx708: system.FakeCameraHardware) -> None:
    cm = libcamera.CameraManager.singleton()
    assert cm is libcamera.CameraManager.singleton()
    camera = cm.cameras[0]
    assert cm.get(camera.id) is camera and str(camera) == f"<libcamera.Camera '{camera.id}'>"
    props = {k.name: v for k, v in camera.properties.items()}
    assert props["Model"] == "imx708" and props["Rotation"] == 180
    with pytest.raises(RuntimeError, match="Failed to create request: Cannot allocate memory"):
        camera.create_request()
    camera.acquire()
    with pytest.raises(RuntimeError, match="Failed to acquire camera: Device or resource busy"):
        camera.acquire()
    config = camera.generate_configuration([libcamera.StreamRole.Viewfinder])
    with pytest.raises(RuntimeError, match="Failed to start camera: Permission denied"):
        camera.start()
    camera.configure(config)
    request = camera.create_request(7)
    with pytest.raises(RuntimeError, match="Failed to queue request: Permission denied"):
        camera.queue_request(request)
    camera.release()
    assert cm.get_ready_requests() == []  # non-blocking eventfd: nothing is ready


def test_sizes_strides_and_the_sensor_mode_come_from_validate(imx708: system.FakeCameraHardware) -> None:
    cm = libcamera.CameraManager.singleton()
    camera, config = configured(cm, 161, 120)
    sc = config.at(0)
    assert (sc.size.width, sc.size.height) == (160, 120)  # even width, as the ISP needs
    assert sc.stride == 192 and sc.frame_size == 192 * 120 * 3 // 2
    assert (config.sensor_config.output_size.width, config.sensor_config.bit_depth) == (1536, 10)
    limits = {k.name: v for k, v in camera.controls.items()}["FrameDurationLimits"]
    assert limits.min == round(1e6 / 120.13)
    camera.release()


def test_a_sensor_configuration_no_mode_matches_is_invalid(imx708: system.FakeCameraHardware) -> None:
    cm = libcamera.CameraManager.singleton()
    camera = cm.cameras[0]
    camera.acquire()
    config = camera.generate_configuration([libcamera.StreamRole.Raw])
    config.sensor_config = libcamera.SensorConfiguration()
    config.sensor_config.output_size = libcamera.Size(1920, 1080)
    config.sensor_config.bit_depth = 10
    assert config.validate() == libcamera.CameraConfiguration.Status.Invalid
    with pytest.raises(RuntimeError, match="Failed to configure camera: Invalid argument"):
        camera.configure(config)
    raw = camera.generate_configuration([libcamera.StreamRole.Raw]).at(0).formats
    assert [str(p) for p in raw.pixel_formats] == ["SBGGR10_CSI2P"]
    assert [(s.width, s.height) for s in raw.sizes(raw.pixel_formats[0])] == [
        (1536, 864), (2304, 1296), (4608, 2592)]
    camera.release()


def test_frames_fill_memfd_buffers_with_their_number(imx708: system.FakeCameraHardware) -> None:
    cm = libcamera.CameraManager.singleton()
    camera, config = configured(cm, sensor=(1536, 864))
    stream = config.at(0).stream
    allocator = libcamera.FrameBufferAllocator(camera)
    assert allocator.allocate(stream) == 3
    buffers = allocator.buffers(stream)
    fd = buffers[0].planes[0].fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    camera.start({libcamera.controls.FrameDurationLimits: (33333, 33333)})
    for i, buffer in enumerate(buffers):
        request = camera.create_request(i)
        request.add_buffer(stream, buffer)
        camera.queue_request(request)
    seen: list[int] = []
    while len(seen) < 3:
        for request in wait_ready(cm):
            assert request.status == libcamera.Request.Status.Complete
            buffer = request.buffers[stream]
            assert buffer.metadata.status == libcamera.FrameMetadata.Status.Success
            timestamp = request.metadata[libcamera.controls.SensorTimestamp]
            assert timestamp == buffer.metadata.timestamp > 0
            plane = buffer.planes[0]
            with mmap.mmap(plane.fd, plane.length) as mm:
                luma = np.frombuffer(mm, np.uint8, 192 * 120).reshape(120, 192)[:, :160].copy()
            seen.append(framecode.read(luma))
    assert seen == [0, 1, 2]
    with pytest.raises(RuntimeError, match="Unable to cast"):
        py_to_control_value(33333.0, libcamera.ControlType.Integer64)
    camera.stop()
    camera.release()


def test_stop_cancels_queued_requests_and_can_hang(imx708: system.FakeCameraHardware) -> None:
    cm = libcamera.CameraManager.singleton()
    camera, config = configured(cm, sensor=(1536, 864))
    stream = config.at(0).stream
    allocator = libcamera.FrameBufferAllocator(camera)
    allocator.allocate(stream)
    imx708.frontend_timeout()  # nothing completes from now on
    camera.start()
    for i, buffer in enumerate(allocator.buffers(stream)):
        request = camera.create_request(i)
        request.add_buffer(stream, buffer)
        camera.queue_request(request)
    imx708.hang_stop()
    stopper = threading.Thread(target=camera.stop, daemon=True)
    stopper.start()
    stopper.join(0.5)
    assert stopper.is_alive() and imx708.events("stop_blocked")
    imx708.release_stop()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    cancelled = wait_ready(cm)
    assert [r.status for r in cancelled] == [libcamera.Request.Status.Cancelled] * 3
    assert imx708.events("frontend_timeout_logged")
    camera.release()


def test_an_unplugged_camera_is_unlisted_and_refuses_everything(imx708: system.FakeCameraHardware) -> None:
    cm = libcamera.CameraManager.singleton()
    camera, _ = configured(cm, sensor=(1536, 864))
    imx708.vanish()
    assert cm.cameras == []
    for call, what in ((camera.stop, "stop camera"), (camera.release, "release camera")):
        with pytest.raises(RuntimeError, match=f"Failed to {what}: No such device"):
            call()
    imx708.reappear()
    fresh = cm.cameras[0]
    assert fresh is not camera and fresh.id == camera.id
    fresh.acquire()
    fresh.release()
