"""recording: the pipeline runs from the camera the guards opened into the chosen root.

Entering adopts the camera that the `open_camera` guard opened and starts the pipeline
(continuing the output held across a camera loss, when there is one); it does nothing
else, so an entry cannot half-happen. Leaving is the `cleanup` guard's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from loguru import logger

if TYPE_CHECKING:
    from transitions import EventData

    from states.unit import Unit


def enter(event: EventData) -> None:
    unit = cast("Unit", event.model)
    camera, unit.pending_camera = unit.pending_camera, None
    assert camera is not None and unit.root_status is not None  # the guards checked both
    held, unit.held_output = unit.held_output, None
    unit.pipeline = unit.hardware.make_pipeline(camera, unit.root_status.path, unit.report_error,
                                                unit.when_segment_closed, resume=held,
                                                when_quality_step=unit.when_quality_step)
    unit.recording_since = unit.clock()
    unit.owned_threads.extend(unit.pipeline.threads)
    unit.pipeline.start()
    logger.info("recording camera={} mode={}x{}@{:g} root={}", camera.name,
                camera.mode.width, camera.mode.height, camera.mode.fps, unit.root_status.path)
