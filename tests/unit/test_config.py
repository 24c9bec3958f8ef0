"""The config loader: where it looks, what it accepts, and how exactly it reports mistakes."""

from __future__ import annotations

import math
import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import (
    DEFAULTS_SOURCE,
    SEARCH_PATHS,
    ConfigError,
    ConfigProblem,
    VigilConfig,
    default_unit_id,
    describe_defaults,
    load_config,
    parse_config_text,
)
from controller.config.loading import MAX_CONFIG_BYTES
from controller.config.yamldoc import MAX_NESTING_DEPTH, MAX_VALUES
from hw.errors import VigilError

CAMERA_KEYS = (
    "backend, width, height, fps, source, device, input_format, pace, read_timeout_seconds, "
    "frozen_seconds, inject_faults"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Problems name the file as it was given; a relative name keeps expected messages short.
    monkeypatch.chdir(tmp_path)


def problems_in(tmp_path: Path, text: str) -> list[ConfigProblem]:
    """The problems load_config reports for `text` saved as vigil.yaml in the working dir."""
    write(tmp_path / "vigil.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config("vigil.yaml", env={})
    return caught.value.problems


def only_problem(tmp_path: Path, text: str) -> ConfigProblem:
    problems = problems_in(tmp_path, text)
    assert len(problems) == 1, problems
    return problems[0]


# --- where the config comes from -------------------------------------------------------------


def test_no_file_anywhere_gives_built_in_defaults(tmp_path: Path) -> None:
    loaded = load_config(env={}, search_paths=[tmp_path / "a.yaml", tmp_path / "b.yaml"])

    assert loaded.source == DEFAULTS_SOURCE == "built-in defaults"
    config = loaded.config
    assert config == VigilConfig()
    assert (config.camera.backend, config.camera.width, config.camera.height) == ("auto", 1280, 720)
    assert config.camera.fps == 30
    assert config.camera.source is None
    assert config.camera.device == "/dev/video0"
    assert config.camera.pace is True
    assert config.camera.read_timeout_seconds == 2.0
    assert config.recording.root == Path("recordings")
    assert config.recording.fallback_roots == []
    assert (config.recording.segment_seconds, config.recording.fragment_seconds) == (60, 1.0)
    assert (config.recording.encoder_preset, config.recording.crf) == ("ultrafast", 23)
    assert (config.recording.queue_frames, config.recording.autostart) == (60, True)
    assert config.recovery.max_attempts == 3
    assert (config.recovery.backoff_seconds, config.recovery.backoff_max_seconds) == (1.0, 5.0)
    assert config.recovery.critical_probe_seconds == 5.0
    assert config.logging.level == "INFO"


def test_default_search_paths_are_boot_partition_then_etc() -> None:
    assert (Path("/boot/firmware/vigil.yaml"), Path("/etc/vigil/vigil.yaml")) == SEARCH_PATHS


@pytest.fixture
def four_configs(tmp_path: Path) -> dict[str, Path]:
    """One config file per place load_config looks, each with a different width."""
    return {
        "argument": write(tmp_path / "arg.yaml", "camera: {width: 640}\n"),
        "env": write(tmp_path / "env.yaml", "camera: {width: 800}\n"),
        "first_search": write(tmp_path / "boot" / "vigil.yaml", "camera: {width: 1024}\n"),
        "second_search": write(tmp_path / "etc" / "vigil.yaml", "camera: {width: 1920}\n"),
    }


def test_argument_wins_over_env_and_search_paths(four_configs: dict[str, Path]) -> None:
    loaded = load_config(
        four_configs["argument"],
        env={"VIGIL_CONFIG": str(four_configs["env"])},
        search_paths=[four_configs["first_search"], four_configs["second_search"]],
    )

    assert loaded.config.camera.width == 640
    assert loaded.source == str(four_configs["argument"])


def test_argument_may_be_a_string(four_configs: dict[str, Path]) -> None:
    loaded = load_config(str(four_configs["argument"]), env={})

    assert loaded.config.camera.width == 640


def test_env_var_wins_over_search_paths(four_configs: dict[str, Path]) -> None:
    loaded = load_config(
        env={"VIGIL_CONFIG": str(four_configs["env"])},
        search_paths=[four_configs["first_search"], four_configs["second_search"]],
    )

    assert loaded.config.camera.width == 800
    assert loaded.source == str(four_configs["env"])


def test_env_defaults_to_the_process_environment(
    four_configs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_CONFIG", str(four_configs["env"]))

    loaded = load_config(search_paths=[four_configs["first_search"]])

    assert loaded.source == str(four_configs["env"])


def test_first_existing_search_path_is_used(four_configs: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_config(
        env={},
        search_paths=[
            tmp_path / "missing.yaml",
            four_configs["second_search"],
            four_configs["first_search"],
        ],
    )

    assert loaded.config.camera.width == 1920
    assert loaded.source == str(four_configs["second_search"])


def test_empty_env_var_counts_as_unset(four_configs: dict[str, Path]) -> None:
    loaded = load_config(env={"VIGIL_CONFIG": ""}, search_paths=[four_configs["first_search"]])

    assert loaded.source == str(four_configs["first_search"])


def test_missing_file_named_as_argument_is_an_error(
    four_configs: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "typo.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(missing, env={}, search_paths=[four_configs["first_search"]])

    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (str(missing), None, "")
    assert str(problem) == f"{missing}: config file not found (named explicitly)"


def test_missing_file_named_by_env_var_is_an_error(
    four_configs: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "typo.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(env={"VIGIL_CONFIG": str(missing)}, search_paths=[four_configs["first_search"]])

    assert str(caught.value) == f"{missing}: config file not found (named by $VIGIL_CONFIG)"


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env={})

    assert str(caught.value) == f"{tmp_path}: is a directory, not a config file"


def test_existing_search_path_that_is_a_directory_is_an_error_not_skipped(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "vigil.yaml"
    directory.mkdir()

    with pytest.raises(ConfigError, match="is a directory"):
        load_config(env={}, search_paths=[directory])


def test_file_that_is_not_utf8_reports_the_line(tmp_path: Path) -> None:
    config_file = tmp_path / "vigil.yaml"
    config_file.write_bytes(b"camera:\n  device: /dev/vid\xff\n")

    with pytest.raises(ConfigError) as caught:
        load_config(config_file, env={})

    [problem] = caught.value.problems
    assert problem.line == 2
    assert "is not UTF-8 text" in problem.message


@pytest.mark.parametrize("text", ["", "# every line commented out\n", "{}\n", "---\n"])
def test_empty_file_is_valid_and_gives_defaults(tmp_path: Path, text: str) -> None:
    config_file = write(tmp_path / "vigil.yaml", text)

    loaded = load_config(config_file, env={})

    assert loaded.config == VigilConfig()
    assert loaded.source == str(config_file)


def test_section_with_every_key_commented_out_gives_its_defaults() -> None:
    config = parse_config_text("camera:\n  # width: 640\nlogging:\n", "vigil.yaml")

    assert config == VigilConfig()


def test_values_from_the_file_are_used() -> None:
    text = """\
camera:
  backend: file
  source: lavfi:testsrc2=size=640x480:rate=30
  width: 640
  height: 480
  fps: 12.5
  pace: false
recording:
  root: /var/lib/vigil
  fallback_roots: [/mnt/usb, /tmp/vigil]
  fragment_seconds: 0.5
logging:
  level: debug
"""
    config = parse_config_text(text, "vigil.yaml")

    assert config.camera.backend == "file"
    assert config.camera.source == "lavfi:testsrc2=size=640x480:rate=30"
    assert (config.camera.width, config.camera.height, config.camera.fps) == (640, 480, 12.5)
    assert config.camera.pace is False
    assert config.recording.root == Path("/var/lib/vigil")
    assert config.recording.fallback_roots == [Path("/mnt/usb"), Path("/tmp/vigil")]
    assert config.recording.fragment_seconds == 0.5
    assert config.recording.segment_seconds == 60
    assert config.logging.level == "DEBUG"


# --- each kind of mistake, with its line and key -----------------------------------------------


def test_yaml_syntax_error_gives_line_column_and_yaml_reason(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  width: 1280\n  height: 720: 5\n")

    assert (problem.line, problem.key) == (3, "")
    assert str(problem) == (
        "vigil.yaml:3: invalid YAML at line 3, column 14: mapping values are not allowed here"
    )


def test_unclosed_bracket_points_at_where_yaml_gave_up_and_where_it_began(
    tmp_path: Path,
) -> None:
    problem = only_problem(tmp_path, "camera:\n  width: [1280\n")

    assert problem.line == 3
    assert "expected ',' or ']'" in problem.message
    assert "while parsing a flow sequence on line 2" in problem.message


def test_tab_indentation_is_a_syntax_error_on_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  width: 640\n\theight: 480\n")

    assert (problem.line, problem.key) == (3, "")
    assert "'\\t'" in problem.message


def test_python_tags_are_refused_as_safe_load_would(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  device: !!python/object:os.system x\n")

    assert problem.line == 2
    assert "could not determine a constructor" in problem.message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  width: 640\ncamrea:\n  width: 640\n")

    assert (problem.line, problem.key) == (3, "camrea")
    assert str(problem) == (
        "vigil.yaml:3: camrea: unknown key; allowed keys at the top level: "
        f"{', '.join(VigilConfig.model_fields)}; did you mean 'camera'?"
    )


def test_unknown_nested_key(tmp_path: Path) -> None:
    text = "# vigil\ncamera:\n  backend: synthetic\n  height: 480\n  widht: 640\n"
    problem = only_problem(tmp_path, text)

    assert (problem.line, problem.key, problem.value) == (5, "camera.widht", 640)
    assert str(problem) == (
        f"vigil.yaml:5: camera.widht: unknown key; allowed keys in camera: {CAMERA_KEYS}; "
        "did you mean 'width'?"
    )


def test_wrong_type(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  fps: fast\n")

    assert (problem.line, problem.key, problem.value) == (2, "camera.fps", "fast")
    assert str(problem) == (
        "vigil.yaml:2: camera.fps: 'fast' is not a number; "
        "fps must be a number greater than 0 and at most 120"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("crf: 1.5", "recording.crf: 1.5 is not a whole number"),
        ("autostart: maybe", "recording.autostart: 'maybe' is not true or false"),
        ("queue_frames: yes", "recording.queue_frames: true is not a whole number"),
        ("segment_seconds: on", "recording.segment_seconds: true is not a number"),
        ("root: 5", "recording.root: 5 is not a path"),
        ("fallback_roots: /mnt/usb", "recording.fallback_roots: '/mnt/usb' is not a list"),
        ("encoder_preset: 7", "recording.encoder_preset: 7 is not allowed"),
        ("segment_seconds: .inf", "recording.segment_seconds: inf is not a finite number"),
        ("crf:", "recording.crf: no value given; crf must be a whole number from 0 to 51"),
    ],
)
def test_wrong_types_each_name_what_was_expected(tmp_path: Path, line: str, expected: str) -> None:
    problem = only_problem(tmp_path, f"recording:\n  fragment_seconds: 1\n  {line}\n")

    assert problem.line == 3
    assert str(problem).startswith(f"vigil.yaml:3: {expected}")


def test_text_field_given_a_number(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  device: 0\n")

    assert (problem.line, problem.key) == (2, "camera.device")
    assert problem.message.startswith("0 is not text")


@pytest.mark.parametrize(
    ("text", "line", "key", "expected"),
    [
        (
            "recording:\n  crf: 60\n",
            2,
            "recording.crf",
            "60 is out of range; crf must be a whole number from 0 to 51",
        ),
        (
            "camera:\n  fps: 0\n",
            2,
            "camera.fps",
            "0 is out of range; fps must be a number greater than 0 and at most 120",
        ),
        (
            "camera:\n  width: 640\n  height: 5000\n",
            3,
            "camera.height",
            "5000 is out of range; height must be an even number from 48 to 4096",
        ),
        (
            "recording:\n  fragment_seconds: 0.05\n",
            2,
            "recording.fragment_seconds",
            "0.05 is out of range; fragment_seconds must be a number from 0.1 to 10",
        ),
        (
            "recovery:\n  backoff_seconds: -1\n",
            2,
            "recovery.backoff_seconds",
            "-1 is out of range; backoff_seconds must be a number greater than 0",
        ),
        (
            "camera:\n  read_timeout_seconds: 61\n",
            2,
            "camera.read_timeout_seconds",
            "61 is out of range; read_timeout_seconds must be a number greater than 0 and "
            "at most 60",
        ),
    ],
)
def test_out_of_range_value(tmp_path: Path, text: str, line: int, key: str, expected: str) -> None:
    problem = only_problem(tmp_path, text)

    assert (problem.line, problem.key, problem.message) == (line, key, expected)


def test_odd_width_is_not_supported(tmp_path: Path) -> None:
    text = "camera:\n  backend: synthetic\n  fps: 30\n  height: 480\n\n  # too wide\n  width: 641\n"
    problem = only_problem(tmp_path, text)

    assert (problem.line, problem.key, problem.value) == (7, "camera.width", 641)
    assert str(problem) == (
        "vigil.yaml:7: camera.width: 641 is not supported; "
        "width must be an even number from 64 to 4096"
    )


@given(width=st.integers(min_value=-10, max_value=5000))
def test_width_is_accepted_exactly_when_even_and_from_64_to_4096(width: int) -> None:
    text = f"camera:\n  width: {width}\n"
    try:
        config = parse_config_text(text, "vigil.yaml")
    except ConfigError as err:
        assert not (width % 2 == 0 and 64 <= width <= 4096)
        [problem] = err.problems
        assert (problem.line, problem.key) == (2, "camera.width")
        verdict = "is out of range" if width % 2 == 0 else "is not supported"
        assert problem.message.startswith(f"{width} {verdict};")
    else:
        assert width % 2 == 0 and 64 <= width <= 4096
        assert config.camera.width == width


def test_enum_value_not_allowed_lists_allowed_values(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "logging:\n  level: INFO\ncamera:\n  backend: webcam\n")

    assert (problem.line, problem.key, problem.value) == (4, "camera.backend", "webcam")
    assert str(problem) == (
        "vigil.yaml:4: camera.backend: 'webcam' is not allowed; "
        "allowed values: auto, synthetic, file, v4l2, picamera2"
    )


def test_log_level_not_allowed_lists_levels(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "logging:\n  level: verbose\n")

    assert problem.message == (
        "'VERBOSE' is not allowed; allowed values: DEBUG, INFO, WARNING, ERROR"
    )


def test_fragment_longer_than_segment(tmp_path: Path) -> None:
    text = "recording:\n  fragment_seconds: 5\n  segment_seconds: 2\n"
    problem = only_problem(tmp_path, text)

    assert (problem.line, problem.key, problem.value) == (2, "recording.fragment_seconds", 5)
    assert problem.message == (
        "5 is out of range; fragment_seconds must not be more than segment_seconds (2)"
    )


def test_fragment_equal_to_segment_is_allowed() -> None:
    config = parse_config_text(
        "recording:\n  fragment_seconds: 2\n  segment_seconds: 2\n", "vigil.yaml"
    )

    assert config.recording.fragment_seconds == config.recording.segment_seconds == 2


def test_backoff_max_below_backoff(tmp_path: Path) -> None:
    text = "recovery:\n  backoff_max_seconds: 1\n  backoff_seconds: 5\n"
    problem = only_problem(tmp_path, text)

    assert (problem.line, problem.key) == (2, "recovery.backoff_max_seconds")
    assert "must be at least backoff_seconds (5)" in problem.message


def test_file_backend_without_source_points_at_the_camera_section(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "logging:\n  level: INFO\ncamera:\n  backend: file\n")

    assert (problem.line, problem.key, problem.value) == (3, "camera.source", None)
    assert str(problem).startswith("vigil.yaml:3: camera.source: required when backend is 'file'")
    assert "lavfi:testsrc2=size=640x480:rate=30" in problem.message


def test_file_backend_with_empty_source_points_at_the_source_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  backend: file\n  source:\n  fps: 25\n")

    assert (problem.line, problem.key) == (3, "camera.source")


def test_other_backends_need_no_source() -> None:
    config = parse_config_text("camera:\n  backend: v4l2\n", "vigil.yaml")

    assert config.camera.source is None


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("recording:\n  root: ''\n", 2, "recording.root"),
        ("camera:\n  device: ''\n", 2, "camera.device"),
        ("camera:\n  backend: file\n  source: '  '\n", 3, "camera.source"),
    ],
)
def test_empty_text_is_refused(tmp_path: Path, text: str, line: int, key: str) -> None:
    problem = only_problem(tmp_path, text)

    assert (problem.line, problem.key) == (line, key)
    assert problem.message.endswith("must not be empty")


def test_bad_sequence_item_is_keyed_by_its_index(tmp_path: Path) -> None:
    text = "recording:\n  fallback_roots:\n    - /mnt/usb\n    - 42\n    - ''\n"
    problems = problems_in(tmp_path, text)

    assert [(p.line, p.key) for p in problems] == [
        (4, "recording.fallback_roots.1"),
        (5, "recording.fallback_roots.2"),
    ]


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera: 5\n")

    assert (problem.line, problem.key) == (1, "camera")
    assert problem.message == f"5 is not a mapping; allowed keys in camera: {CAMERA_KEYS}"


def test_duplicate_key_is_reported_at_the_repeat(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  width: 640\n  height: 480\n  width: 800\n")

    assert (problem.line, problem.key) == (4, "camera.width")
    assert problem.message == "duplicate key; it is already set on line 2"


def test_several_problems_are_reported_together_each_on_its_own_line(tmp_path: Path) -> None:
    text = """\
camera:
  backend: webcam
  width: 641
  fps: fast
recording:
  crf: 99
  fallback_roots:
    - /mnt/usb
    - 7
logging:
  levle: INFO
extra: 1
"""
    config_file = write(tmp_path / "vigil.yaml", text)

    with pytest.raises(ConfigError) as caught:
        load_config(config_file, env={})

    assert [(p.line, p.key) for p in caught.value.problems] == [
        (2, "camera.backend"),
        (3, "camera.width"),
        (4, "camera.fps"),
        (6, "recording.crf"),
        (9, "recording.fallback_roots.1"),
        (11, "logging.levle"),
        (12, "extra"),
    ]
    lines = str(caught.value).splitlines()
    assert len(lines) == 7
    assert all(line.startswith(f"{config_file}:") for line in lines)
    assert lines[1] == (
        f"{config_file}:3: camera.width: 641 is not supported; "
        "width must be an even number from 64 to 4096"
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("- camera\n- recording\n", "a list"),
        ("\n\njust some words\n", "text"),
        ("42\n", "a number"),
    ],
)
def test_top_level_that_is_not_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    problem = only_problem(tmp_path, text)

    assert problem.key == ""
    assert problem.line == len(text) - len(text.lstrip("\n")) + 1
    assert problem.message == (
        f"the top level must be a mapping of sections ({', '.join(VigilConfig.model_fields)}); "
        f"found {found}"
    )


def test_config_error_is_a_vigil_error_and_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text("camera:\n  width: 3\n", "vigil.yaml")

    assert isinstance(caught.value, VigilError)
    assert isinstance(caught.value, ValueError)


# --- the documented defaults -------------------------------------------------------------------


def test_describe_defaults_parses_back_to_the_defaults() -> None:
    text = describe_defaults()

    assert parse_config_text(text, "example.yaml") == VigilConfig()


def test_describe_defaults_explains_every_key_in_a_comment_above_it() -> None:
    lines = describe_defaults().splitlines()

    for section_name, section_field in VigilConfig.model_fields.items():
        assert f"{section_name}:" in lines
        start = lines.index(f"{section_name}:")
        end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                    and not lines[i].startswith("#")), len(lines))
        section_model = section_field.annotation
        assert section_model is not None
        for name, field in section_model.model_fields.items():
            assert field.description, f"{section_name}.{name} has no description"
            [index] = [i for i in range(start, end) if lines[i].startswith(f"  {name}: ")]
            assert lines[index - 1].startswith("  # "), f"{section_name}.{name} is not commented"


# --- api ---------------------------------------------------------------------------------------


def test_api_defaults_listen_on_loopback_with_actions_behind_a_token_file() -> None:
    api = VigilConfig().api

    assert (api.enabled, api.listen, api.token_file) == (
        True, "127.0.0.1:8080", Path("/etc/vigil/api-token")
    )


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:80", "0.0.0.0", 80), ("[::1]:8080", "::1", 8080),
     ("vigil-7.local:65535", "vigil-7.local", 65535)],
)
def test_api_listen_accepts_ipv4_ipv6_and_host_names(listen: str, host: str, port: int) -> None:
    from controller.config import parse_listen

    config = parse_config_text(f"api:\n  listen: '{listen}'\n", "vigil.yaml")

    assert parse_listen(config.api.listen) == (host, port)


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("8080", "must be HOST:PORT, such as 127.0.0.1:8080"),
        ("127.0.0.1:0", "port '0' is not a whole number from 1 to 65535"),
        ("127.0.0.1:http", "port 'http' is not a whole number from 1 to 65535"),
        ("::1:8080", "put an IPv6 address in brackets, such as [::1]:8080"),
        ("[nope]:8080", "'nope' in brackets is not an IPv6 address"),
        ("bad_host:8080", "'bad_host' is neither an IP address nor a host name"),
    ],
)
def test_api_listen_that_is_not_host_and_port_is_reported_on_its_line(
    tmp_path: Path, listen: str, reason: str
) -> None:
    problem = only_problem(tmp_path, f"api:\n  enabled: true\n  listen: '{listen}'\n")

    assert str(problem) == f"vigil.yaml:3: api.listen: '{listen}' is not valid; {reason}"


def test_api_unknown_key_lists_the_api_keys(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "api:\n  token: secret\n")

    assert str(problem) == (
        "vigil.yaml:2: api.token: unknown key; allowed keys in api: enabled, listen, token_file, "
        "viewer_token_file, public_footage, history, history_file, export_max_seconds; "
        "did you mean 'token_file'?"
    )


# --- gpio --------------------------------------------------------------------------------------


def test_gpio_defaults_use_no_pins() -> None:
    gpio = VigilConfig().gpio
    assert (gpio.enabled, gpio.reset_button, gpio.status_led) == (True, None, None)
    assert (gpio.reset_hold_seconds, gpio.pin_factory) == (3.0, None)


@pytest.mark.parametrize(("written", "kept"), [("17", "17"), ("GPIO17", "GPIO17"), ("BOARD11", "BOARD11"),
                                               ("'J8:11'", "J8:11")])
def test_gpio_pins_are_bcm_numbers_or_gpiozero_names(written: str, kept: str) -> None:
    config = parse_config_text(f"gpio:\n  reset_button: {written}\n  pin_factory: mock\n", "vigil.yaml")

    assert (config.gpio.reset_button, config.gpio.pin_factory) == (kept, "mock")


@pytest.mark.parametrize("written", ["true", "-1", "''", "1.5"])
def test_gpio_pin_that_is_not_a_pin_is_reported_on_its_line(tmp_path: Path, written: str) -> None:
    problem = only_problem(tmp_path, f"gpio:\n  enabled: true\n  status_led: {written}\n")

    assert (problem.line, problem.key) == (3, "gpio.status_led")
    assert problem.message.endswith(
        "is not valid: give a BCM pin number such as 17, or a pin name such as GPIO17, BOARD11 or J8:11"
    )


def test_gpio_button_and_led_on_the_same_pin_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "gpio:\n  reset_button: 17\n  status_led: GPIO17\n")

    assert str(problem) == (
        "vigil.yaml:3: gpio.status_led: 'GPIO17' is the same pin as reset_button ('17'); "
        "the button and the LED need a pin each"
    )


def test_gpio_unknown_pin_factory_lists_the_choices(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "gpio:\n  pin_factory: gpiod\n")

    assert str(problem) == (
        "vigil.yaml:2: gpio.pin_factory: 'gpiod' is not valid: "
        "allowed values: null, lgpio, rpigpio, pigpio, native, mock"
    )


def test_gpio_hold_time_has_a_range(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "gpio:\n  reset_hold_seconds: 0\n")

    assert str(problem) == (
        "vigil.yaml:2: gpio.reset_hold_seconds: 0 is out of range; "
        "reset_hold_seconds must be a number from 0.1 to 60"
    )


# --- storage lifecycle: recording.merge*, storage.* ------------------------------------------


def test_storage_defaults_keep_30_days_and_a_gigabyte_free() -> None:
    config = parse_config_text("", "vigil.yaml")

    assert (config.recording.merge, config.recording.merge_verify) == ("hourly", "full")
    storage = config.storage
    assert (storage.retention_days, storage.reserve_mb, storage.reserve_percent) == (30, 1024, 5)
    assert storage.check_seconds == 60


def test_merge_off_written_bare_is_not_taken_for_a_boolean(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `off` as false; the user meant the choice `off`.
    config = parse_config_text("recording:\n  merge: off\n  merge_verify: keyframes\n", "vigil.yaml")
    assert (config.recording.merge, config.recording.merge_verify) == ("off", "keyframes")

    problem = only_problem(tmp_path, "recording:\n  merge: daily\n")
    assert str(problem) == (
        "vigil.yaml:2: recording.merge: 'daily' is not allowed; allowed values: hourly, off"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("retention_days: -1", "storage.retention_days: -1 is out of range; "
                               "retention_days must be a number from 0 to 36500"),
        ("reserve_mb: -5", "storage.reserve_mb: -5 is out of range; reserve_mb must be a number at least 0"),
        ("reserve_percent: 95", "storage.reserve_percent: 95 is out of range; "
                                "reserve_percent must be a number from 0 to 90"),
        ("check_seconds: 0", "storage.check_seconds: 0 is out of range; "
                             "check_seconds must be a number from 1 to 86400"),
        ("reserve_mb: lots", "storage.reserve_mb: 'lots' is not a number"),
    ],
)
def test_storage_keys_have_ranges(tmp_path: Path, line: str, message: str) -> None:
    problem = only_problem(tmp_path, f"storage:\n  {line}\n")

    assert problem.line == 2
    assert str(problem).startswith(f"vigil.yaml:2: {message}")


def test_storage_zero_means_keep_forever_and_no_reserve() -> None:
    config = parse_config_text(
        "storage:\n  retention_days: 0\n  reserve_mb: 0\n  reserve_percent: 0\n", "vigil.yaml"
    )
    storage = config.storage
    assert (storage.retention_days, storage.reserve_mb, storage.reserve_percent) == (0, 0, 0)


# --- unit ----------------------------------------------------------------------------------------


def test_unit_id_defaults_to_the_host_name_and_null_means_the_default() -> None:
    expected = default_unit_id()
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", expected)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", socket.gethostname()):
        assert expected == socket.gethostname()

    assert VigilConfig().unit.id == expected
    assert parse_config_text("unit:\n  id: null\n", "vigil.yaml").unit.id == expected
    assert parse_config_text("unit:\n  id: cam-7.garage_2\n", "vigil.yaml").unit.id == "cam-7.garage_2"


def test_the_example_config_writes_the_unit_id_as_null_not_this_machines_name() -> None:
    assert "\nunit:\n" in describe_defaults()
    assert "\n  id: null\n" in describe_defaults()


@pytest.mark.parametrize("written", ["'cam/7'", "'cam 7'", "-cam", "'.hidden'", "'a+b'", "'#'", "x" * 65,
                                     "'caf\u00e9'", "7", "''"])
def test_unit_id_that_cannot_name_a_topic_or_key_is_refused(tmp_path: Path, written: str) -> None:
    problem = only_problem(tmp_path, f"unit:\n  id: {written}\n")

    assert (problem.line, problem.key) == (2, "unit.id")


# --- hostile input: every class gets file:line:key and ConfigError, never anything else ---------
#
# Each test runs under pytest-timeout: before the bounds, an alias chain or a FIFO made the
# loader run for minutes or block forever, and the timeout turns that into a failure.

HOSTILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (section, key) of settings that take one scalar and have no rule involving another key, so a
# bad value there is reported at exactly that key.
SCALAR_KEYS = [
    ("unit", "id"), ("camera", "backend"), ("camera", "width"), ("camera", "height"),
    ("camera", "device"), ("camera", "pace"), ("recording", "root"), ("recording", "crf"),
    ("recording", "queue_frames"), ("recording", "encoder_preset"), ("storage", "retention_days"),
    ("storage", "reserve_mb"), ("storage", "reserve_percent"), ("storage", "check_seconds"),
    ("recovery", "max_attempts"), ("recovery", "max_abandoned_calls"), ("logging", "level"),
    ("api", "listen"), ("api", "token_file"), ("gpio", "reset_hold_seconds"), ("gpio", "status_led"),
]
# (section, key, lowest, highest) of numeric settings with no rule involving another key.
NUMBER_KEYS = [
    ("camera", "width", 64, 4096), ("camera", "height", 48, 4096), ("recording", "crf", 0, 51),
    ("recording", "queue_frames", 1, 1000), ("storage", "retention_days", 0, 36500),
    ("storage", "reserve_mb", 0, 16 * 1024 * 1024), ("storage", "reserve_percent", 0, 90),
    ("storage", "check_seconds", 1, 86400), ("recovery", "max_attempts", 1, 100),
    ("recovery", "critical_probe_seconds", 0.1, 3600), ("gpio", "reset_hold_seconds", 0.1, 60),
    ("camera", "frozen_seconds", 0, 3600),
]


def outcome(text: str) -> VigilConfig | ConfigError:
    """The config `text` gives, or its ConfigError; any other exception fails the test."""
    try:
        return parse_config_text(text, "vigil.yaml")
    except ConfigError as err:
        for problem in err.problems:
            assert problem.file == "vigil.yaml"
            assert problem.message
            assert str(problem).startswith("vigil.yaml")
        return err


def refused_at(text: str, line: int, key: str) -> ConfigProblem:
    """The one problem `text` has, which must be at `line` and `key`."""
    result = outcome(text)
    assert isinstance(result, ConfigError), f"accepted: {text!r}"
    [problem] = result.problems
    assert (problem.line, problem.key) == (line, key), str(result)
    assert str(problem).startswith(f"vigil.yaml:{line}: {key}: ")
    return problem


def yaml_quoted(text: str) -> str:
    """`text` as a YAML double-quoted scalar, every character that is not plain ASCII escaped
    (YAML's \\u escape even carries lone surrogates and NUL)."""
    out = []
    for char in text:
        if char.isascii() and char.isprintable() and char not in '"\\':
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


TAGS = st.one_of(
    st.sampled_from(["!!int", "!!float", "!!bool", "!!null", "!!str", "!!timestamp", "!!binary",
                     "!!set", "!!omap", "!!pairs", "!!map", "!!seq", "!!merge", "!!value",
                     "!!python/object:os.system", "!!python/name:os.system", "!"]),
    st.from_regex(r"![a-z]{1,8}", fullmatch=True),
    st.from_regex(r"!![a-z/:.]{1,20}", fullmatch=True),
    st.from_regex(r"!<tag:[a-z]{1,8}>", fullmatch=True),
)
SCALARS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
    st.sampled_from(["2024-02-30", "2024-13-45 25:61:61", "0x", "1_000", "yes", "~", "1e-300", ".nan",
                     "AA==", "%%%", "'quoted'", "[1, 2]", "{a: 1}", "''"]),
)


@HOSTILE
@given(key=st.sampled_from(SCALAR_KEYS), tag=TAGS, value=SCALARS)
@pytest.mark.timeout(60)
def test_any_tag_on_any_value_is_valid_or_refused_at_its_key(key: tuple[str, str], tag: str,
                                                              value: str) -> None:
    section, name = key
    result = outcome(f"{section}:\n  {name}: {tag} {value}\n")

    if isinstance(result, ConfigError):
        [problem] = result.problems
        if problem.message.startswith("invalid YAML at line 2, column"):  # e.g. `!foo %%%`
            assert (problem.line, problem.key) == (2, "")
        else:
            assert (problem.line, problem.key) == (2, f"{section}.{name}"), str(result)


@HOSTILE
@given(depth=st.integers(min_value=1, max_value=3 * MAX_NESTING_DEPTH),
       kinds=st.lists(st.sampled_from(["[", "{k: "]), min_size=1, max_size=8))
@pytest.mark.timeout(60)
def test_nesting_of_any_depth_is_refused_at_its_key_without_a_recursion_error(depth: int,
                                                                            kinds: list[str]) -> None:
    openers = [kinds[level % len(kinds)] for level in range(depth)]
    closers = ["]" if opener == "[" else "}" for opener in reversed(openers)]
    text = "camera:\n  device: " + "".join(openers) + "x" + "".join(closers) + "\n"

    problem = refused_at(text, 2, outcome_key(text))
    assert problem.key.startswith("camera.device")
    if depth + 2 > MAX_NESTING_DEPTH:
        assert f"nesting is deeper than {MAX_NESTING_DEPTH} levels" in problem.message


def outcome_key(text: str) -> str:
    result = outcome(text)
    assert isinstance(result, ConfigError)
    return result.problems[0].key


@HOSTILE
@given(levels=st.integers(min_value=1, max_value=12), fanout=st.integers(min_value=1, max_value=12),
       where=st.sampled_from(["top", "list"]))
@pytest.mark.timeout(60)
def test_alias_chains_are_refused_once_they_expand_beyond_the_bound(levels: int, fanout: int,
                                                                  where: str) -> None:
    anchors = ["a0: &a0 [" + ", ".join(["x"] * fanout) + "]"]
    for level in range(1, levels + 1):
        anchors.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * fanout) + "]")
    if where == "top":
        text = "\n".join(anchors) + "\n"
    else:
        text = "recording:\n  fallback_roots:\n" + "".join(f"    - {line}\n" for line in anchors)
    expanded = sum(fanout ** level for level in range(levels + 2))  # a node per value, roughly

    result = outcome(text)

    assert isinstance(result, ConfigError)  # unknown keys or lists where paths belong, at least
    if expanded > 2 * MAX_VALUES:
        [problem] = result.problems
        assert "values once its aliases are expanded" in problem.message
        assert problem.line is not None and problem.line <= len(anchors) + 2


def test_an_alias_to_its_own_ancestor_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  inject_faults: &loop [*loop]\n")

    assert (problem.line, problem.key) == (2, "camera.inject_faults.0")
    assert "refers to a value that contains it" in problem.message


@HOSTILE
@given(key=st.sampled_from(SCALAR_KEYS[1:]),
       sign=st.sampled_from(["", "-", "+"]),
       prefix=st.sampled_from(["", "0x", "0o", "0b", "0"]),
       # a short random pattern repeated to a length spread evenly up to 6000 characters
       digits=st.builds(lambda pattern, length: (pattern * length)[:length],
                        st.text(alphabet="0123456789_", min_size=1, max_size=8),
                        st.integers(min_value=1, max_value=6000)),
       quoted=st.booleans())
@pytest.mark.timeout(60)
def test_numbers_of_any_length_are_valid_or_refused_at_their_key(key: tuple[str, str], sign: str,
                                                                 prefix: str, digits: str,
                                                                 quoted: bool) -> None:
    section, name = key
    number = sign + prefix + digits
    written = f"'{number}'" if quoted else number

    result = outcome(f"{section}:\n  {name}: {written}\n")

    if isinstance(result, ConfigError):
        [problem] = result.problems
        assert (problem.line, problem.key) == (2, f"{section}.{name}"), str(result)


def yaml_float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


@HOSTILE
@given(key=st.sampled_from(NUMBER_KEYS),
       value=st.one_of(st.floats(), st.floats(min_value=-1e-300, max_value=1e-300),
                       st.floats(min_value=1e300), st.integers(min_value=-(10**30), max_value=10**30)))
@pytest.mark.timeout(60)
def test_a_number_is_accepted_only_when_finite_and_within_its_documented_range(
        key: tuple[str, str, float, float], value: float) -> None:
    section, name, lowest, highest = key
    written = yaml_float(value) if isinstance(value, float) else str(value)

    result = outcome(f"{section}:\n  {name}: {written}\n")

    if isinstance(result, ConfigError):
        [problem] = result.problems
        assert (problem.line, problem.key) == (2, f"{section}.{name}"), str(result)
    else:
        accepted = getattr(getattr(result, section), name)
        assert math.isfinite(accepted) and lowest <= accepted <= highest, (written, accepted)


@HOSTILE
@given(fps=st.one_of(st.floats(min_value=1e-300, max_value=120), st.sampled_from([1e-300, 0.5, 0.999])),
       timeout=st.one_of(st.none(), st.floats(min_value=1e-300, max_value=60)))
@pytest.mark.timeout(60)
def test_fps_is_accepted_only_when_frames_come_well_within_the_read_timeout(
        fps: float, timeout: float | None) -> None:
    text = f"camera:\n  fps: {fps!r}\n" + (f"  read_timeout_seconds: {timeout!r}\n" if timeout else "")
    read_timeout = timeout or 2.0

    result = outcome(text)

    if isinstance(result, ConfigError):
        assert fps * read_timeout < 2
        [problem] = result.problems
        assert (problem.line, problem.key) == (2, "camera.fps"), str(result)
        assert "fps must be at least 2 / read_timeout_seconds" in problem.message
    else:
        assert result.camera.fps * result.camera.read_timeout_seconds >= 2


def test_a_read_timeout_too_short_for_the_default_fps_is_reported_at_the_timeout(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  read_timeout_seconds: 1e-300\n")

    assert (problem.line, problem.key) == (2, "camera.read_timeout_seconds")
    assert "read_timeout_seconds must be at least 2 / fps (0.06667)" in problem.message


PATH_KEYS = [("recording", "root", "recording.root"), ("api", "token_file", "api.token_file"),
             ("camera", "device", "camera.device"), ("camera", "source", "camera.source"),
             ("recording", "fallback_roots", "recording.fallback_roots.0")]
PATH_TEXT = st.lists(
    st.one_of(st.characters(codec="utf-8"), st.sampled_from(["\0", "\udc80", "\ud800", "\udfff", "/"])),
    min_size=1, max_size=40,
).map("".join)


@HOSTILE
@given(key=st.sampled_from(PATH_KEYS), text=PATH_TEXT)
@pytest.mark.timeout(60)
def test_a_path_is_accepted_only_without_nul_and_as_valid_unicode(key: tuple[str, str, str],
                                                                 text: str) -> None:
    section, name, dotted = key
    value = yaml_quoted(text)
    written = f"[{value}]" if name == "fallback_roots" else value

    result = outcome(f"{section}:\n  {name}: {written}\n")

    if isinstance(result, ConfigError):
        [problem] = result.problems
        assert (problem.line, problem.key) == (2, dotted), str(result)
        str(result).encode("utf-8")  # the message itself can be printed and logged
    else:
        accepted = getattr(getattr(result, section), name)
        accepted = str(accepted[0] if name == "fallback_roots" else accepted)
        assert "\0" not in accepted
        accepted.encode("utf-8")


@settings(HOSTILE, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=3000),
                     st.lists(st.sampled_from([b"camera:", b"\n", b"  ", b"- ", b"&a ", b"*a", b"[", b"{",
                                               b"]", b"}", b": ", b"!!int ", b"\xff", b"\x00", b"\t",
                                               b"width", b"9" * 50, b"'", b'"', b"---", b"#"]),
                              max_size=200).map(b"".join)))
@pytest.mark.timeout(60)
def test_random_bytes_as_the_config_file_are_valid_or_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "random.yaml"  # the same file for every example, rewritten each time
    path.write_bytes(raw)

    try:
        load_config(path, env={})
    except ConfigError as err:
        assert all(problem.file == str(path) for problem in err.problems)
        assert str(err).startswith(str(path))


def test_a_file_larger_than_the_bound_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    assert str(caught.value) == (
        f"{path}: is larger than {MAX_CONFIG_BYTES} bytes; a vigil config is a few KiB"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_as_the_config_file_is_refused_without_reading_it(device: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(device, env={})

    assert str(caught.value) == (
        f"{device}: is a character device, not a regular file; vigil reads its config only from a "
        "regular file"
    )


@pytest.mark.timeout(30)
def test_a_fifo_as_the_config_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "vigil.yaml"
    os.mkfifo(fifo)

    with pytest.raises(ConfigError) as caught:
        load_config(env={}, search_paths=[fifo])

    assert str(caught.value) == (
        f"{fifo}: is a named pipe (FIFO), not a regular file; vigil reads its config only from a "
        "regular file"
    )


def test_a_socket_as_the_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        with pytest.raises(ConfigError, match="is a socket, not a regular file"):
            load_config(path, env={})


def test_an_unknown_numeric_key_lists_the_keys_of_its_own_section(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "camera:\n  1: 2\n")

    assert str(problem) == f"vigil.yaml:2: camera.1: unknown key; allowed keys in camera: {CAMERA_KEYS}"


# --- mqtt --------------------------------------------------------------------------------------


def test_mqtt_is_off_by_default_and_its_base_topic_follows_the_unit_id() -> None:
    config = parse_config_text("unit:\n  id: cam1\n", "vigil.yaml")
    assert config.mqtt.enabled is False and config.mqtt.commands is False
    assert config.mqtt.topic_base(config.unit.id) == "vigil/cam1"
    assert config.mqtt.discovery_prefix == "homeassistant"
    chosen = parse_config_text("mqtt:\n  base_topic: site/door\n", "vigil.yaml")
    assert chosen.mqtt.topic_base("cam1") == "site/door"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("mqtt:\n  enabled: true\n  base_topic: 'a/#'\n", 3,
     "mqtt.base_topic: 'a/#' is not valid: give a topic of 1 to 200 characters without the wildcards "
     "'+' and '#', without a '/' at either end and without empty levels"),
    ("mqtt:\n  discovery_prefix: home//assistant\n", 2,
     "mqtt.discovery_prefix: 'home//assistant' is not valid"),
    ("mqtt:\n  port: 0\n", 2, "mqtt.port: 0 is out of range; port must be a whole number from 1 to 65535"),
    ("mqtt:\n  qos: 3\n", 2, "mqtt.qos: 3 is out of range; qos must be a whole number from 0 to 2"),
    ("mqtt:\n  keepalive_seconds: 1\n", 2, "mqtt.keepalive_seconds: 1 is out of range"),
    ("mqtt:\n  password_file: /etc/vigil/mqtt-password\n", 2,
     "mqtt.password_file: '/etc/vigil/mqtt-password' is set without a username; a password needs "
     "`username` to go with it"),
    ("mqtt:\n  ca_file: /etc/ssl/ca.crt\n", 2,
     "mqtt.ca_file: '/etc/ssl/ca.crt' is set but tls is false; ca_file is only used with `tls: true`"),
    ("mqtt:\n  tls: true\n  keyfile: /k.pem\n", 3, "mqtt.keyfile: '/k.pem' is set without a certfile"),
    ("mqtt:\n  password: hunter2\n", 2, "mqtt.password: unknown key"),
])
def test_mqtt_mistakes_are_reported_on_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    problem = only_problem(tmp_path, text)

    assert str(problem).startswith(f"vigil.yaml:{line}: {message}"), str(problem)
