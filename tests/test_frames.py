"""Frame-exact keyframe extraction: every kind of video, checked against frame stamps."""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ava_keyframes.frames as frames
from ava_keyframes.cli import main
from ava_keyframes.frames import (
    KeyframeError,
    MissingKeyframes,
    extract_keyframes,
    save_keyframes,
)
from ava_keyframes.media import Video, decoder_info, ffmpeg_binary
from ava_keyframes.stamp import read_frame_stamp, write_stamped_video

SIZE = (160, 120)
DURATION = 3.0

# (container, fps, variable frame rate, first timestamp)
KINDS = [
    ("mp4", 30, False, 0.0),
    ("mp4", 29.97, False, 0.0),
    ("mp4", 25, False, 0.0),
    ("mp4", 24, False, 0.0),
    ("mkv", 29.97, False, 0.0),
    ("mkv", 24, False, 0.0),
    ("webm", 30, False, 0.0),
    ("webm", 25, False, 0.0),
    ("mp4", 30, True, 0.0),
    ("mkv", 25, True, 0.0),
    ("webm", 30, True, 0.0),
    ("mp4", 25, False, 1.5),
    ("mkv", 30, True, 10.25),
    ("webm", 29.97, False, 2.0),
]


def _kind_id(kind: tuple) -> str:
    container, fps, vfr, start = kind
    return f"{container}-{fps}{'-vfr' if vfr else ''}{f'-start{start}' if start else ''}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, tuple[Path, list[float]]]:
    """One tiny stamped video per kind: path and each frame's presentation time."""
    folder = tmp_path_factory.mktemp("frames")
    made = {}
    for kind in KINDS:
        container, fps, vfr, start = kind
        path = folder / f"{_kind_id(kind)}.{container}"
        times = write_stamped_video(path, duration=DURATION, fps=fps, size=SIZE,
                                    container=container, vfr=vfr, start_time=start)
        made[kind] = (path, times)
    return made


def expected_frame(times: list[float], second: float) -> int:
    """The reference rule: index of the first frame whose time is >= second."""
    return bisect.bisect_left(times, second)


def probe_seconds(times: list[float]) -> list[int | float]:
    """Integers, fractions, exact frame times (ties) and times just either side of frames."""
    seconds: list[int | float] = [0, 1, 2, 0.5, 1.25, 2.75, 0.333, 1.001, 2.999]
    for index in range(1, len(times), 7):
        seconds += [round(times[index], 4), round(times[index] - 1e-4, 4),
                    round(times[index] + 1e-4, 4)]
    return [s for s in seconds if s <= times[-1]]


def stamps(path: Path, seconds: list, **options) -> list[tuple]:
    return [(s, read_frame_stamp(image)) for s, image in extract_keyframes(path, seconds,
                                                                             **options)]


@pytest.mark.parametrize("kind", KINDS, ids=_kind_id)
def test_every_frame_is_the_first_at_or_after_its_second(videos, kind):
    path, times = videos[kind]
    seconds = probe_seconds(times)
    got = stamps(path, seconds)
    assert [s for s, _ in got] == sorted(set(seconds))
    wrong = [(s, index, expected_frame(times, s)) for s, index in got
             if index != expected_frame(times, s)]
    assert not wrong, f"(second, got frame, expected frame): {wrong}"


@pytest.mark.parametrize("kind", [KINDS[1], KINDS[9], KINDS[12]], ids=_kind_id)
def test_same_pixels_as_an_ffmpeg_seek(videos, kind):
    path, _ = videos[kind]
    for second, image in extract_keyframes(path, [1, 2.5]):
        cmd = [ffmpeg_binary(), "-v", "error", "-ss", str(second), "-i", str(path),
               "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        reference = subprocess.run(cmd, capture_output=True, check=True).stdout  # noqa: S603
        assert image.tobytes() == reference


def test_duplicates_any_order_and_number_types(videos):
    path, times = videos[KINDS[0]]
    got = stamps(path, [2, 1, 1.0, 0.5, np.int64(2), 1])
    assert got == [(0.5, expected_frame(times, 0.5)), (1, expected_frame(times, 1)),
                   (2, expected_frame(times, 2))]
    assert type(got[1][0]) is int and type(got[2][0]) is int


def test_max_side_downscales_and_never_upscales(videos):
    path, times = videos[KINDS[0]]
    small = list(extract_keyframes(path, [1, 2], max_side=80))
    assert [image.shape for _, image in small] == [(60, 80, 3), (60, 80, 3)]
    assert [read_frame_stamp(image) for _, image in small] == [expected_frame(times, 1),
                                                                expected_frame(times, 2)]
    (_, full), = extract_keyframes(path, [1], max_side=1000)
    assert full.shape == (SIZE[1], SIZE[0], 3)


def test_one_decode_per_run_of_close_seconds(videos, monkeypatch):
    path, times = videos[KINDS[0]]
    started = []
    frames_from = Video.frames_from

    def counting_frames_from(self, time, *args):
        started.append(time)
        return frames_from(self, time, *args)

    monkeypatch.setattr(Video, "frames_from", counting_frames_from)
    monkeypatch.setattr(frames, "SEEK_GAP", 1)
    dense = [x / 10 for x in range(25)]
    assert len(stamps(path, dense)) == len(dense)
    assert len(started) == 1
    started.clear()
    sparse = [0.1, 1.2, 2.4]  # more than SEEK_GAP apart: a seek each
    assert [i for _, i in stamps(path, sparse)] == [expected_frame(times, s) for s in sparse]
    assert len(started) == 3


def test_only_answering_frames_are_converted(videos, monkeypatch):
    """Only frames that answer a second are converted to RGB (a 30 fps run of 3 s decodes
    90 frames)."""
    path, times = videos[KINDS[9]]
    read = []
    to_rgb = frames.to_rgb

    def counting_to_rgb(frame, *args, **kwargs):
        read.append((frame.width, frame.height))
        return to_rgb(frame, *args, **kwargs)

    monkeypatch.setattr(frames, "to_rgb", counting_to_rgb)
    seconds = [0, 0.5, 0.51, 1, 2, 2.5]
    assert len(stamps(path, seconds)) == len(seconds)
    assert len(read) == len({expected_frame(times, s) for s in seconds})


def test_closing_the_generator_early_closes_the_file(videos, monkeypatch):
    path, _ = videos[KINDS[0]]
    opened, closed = [], []
    enter, exit_ = Video.__enter__, Video.__exit__
    monkeypatch.setattr(Video, "__enter__", lambda self: opened.append(self) or enter(self))
    monkeypatch.setattr(Video, "__exit__", lambda self, *exc: closed.append(self) or
                        exit_(self, *exc))
    iterator = extract_keyframes(path, [0, 0.1, 0.2, 0.3])
    next(iterator)
    assert opened and not closed
    iterator.close()
    assert closed == opened


def test_video_that_starts_after_the_container_counts_from_its_first_frame(videos, tmp_path):
    """Audio from 0 s, video from 0.5 s: second t is t after the video's first frame
    (``ffmpeg -ss t`` alone would count from the audio's start)."""
    source, times = videos[KINDS[0]]
    path = tmp_path / "late_video.mkv"
    cmd = [ffmpeg_binary(), "-v", "error", "-itsoffset", "0.5", "-i", str(source),
           "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-map", "0:v", "-map", "1:a",
           "-c:v", "copy", "-c:a", "pcm_s16le", "-t", str(DURATION + 0.5), str(path)]
    subprocess.run(cmd, check=True)  # noqa: S603
    seconds = [0, 1, 1.5, 2.25]
    assert stamps(path, seconds) == [(s, expected_frame(times, s)) for s in seconds]


def test_seconds_past_the_end_are_reported_after_the_frames_that_exist(videos):
    path, times = videos[KINDS[2]]
    got = []
    with pytest.raises(MissingKeyframes) as raised:
        for second, image in extract_keyframes(path, [1, 2, 5, 9.5]):
            got.append((second, read_frame_stamp(image)))
    assert got == [(1, expected_frame(times, 1)), (2, expected_frame(times, 2))]
    assert raised.value.missing == [5, 9.5]
    assert str(path) in str(raised.value) and "past the end" in str(raised.value)


def test_truncated_video_yields_what_exists_then_reports_the_rest(videos, tmp_path):
    source, times = videos[KINDS[4]]
    path = tmp_path / "truncated.mkv"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(MissingKeyframes) as raised:
        for second, image in extract_keyframes(path, [0, 0.5, 1, 2, 2.9]):
            got.append((second, read_frame_stamp(image)))
    assert got and all(index == expected_frame(times, s) for s, index in got)
    assert [s for s, _ in got] + raised.value.missing == [0, 0.5, 1, 2, 2.9]
    assert 2.9 in raised.value.missing
    assert str(path) in str(raised.value) and "truncated" in str(raised.value)


def test_corrupt_h264_never_yields_a_damaged_frame(videos, tmp_path):
    source, times = videos[KINDS[4]]
    path = tmp_path / "corrupt.mkv"
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    seconds = [x / 10 for x in range(30)]
    got = []
    with pytest.raises(KeyframeError) as raised:
        for second, image in extract_keyframes(path, seconds):
            got.append((second, read_frame_stamp(image)))
    assert all(index == expected_frame(times, s) for s, index in got)
    assert str(path) in str(raised.value)


def _flip_bits_in_a_referenced_p_frame(clean: Path, damaged: Path, flips: int = 5) -> float:
    """Copy ``clean`` with ``flips`` bits flipped in the first P-frame after 2 s that B-frames
    shown before it refer to; returns that frame's time."""
    import random

    import av

    with av.open(str(clean)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.pos, p.size) for p in container.demux(stream) if p.size]
        time_base = stream.time_base
    index = next(i for i, (pts, _, _) in enumerate(packets[:-1])
                 if pts * time_base > 2 and packets[i + 1][0] < pts)
    pts, pos, size = packets[index]
    data, rng = bytearray(clean.read_bytes()), random.Random(0)
    for _ in range(flips):
        data[pos + rng.randrange(4, size)] ^= 1 << rng.randrange(8)
    damaged.write_bytes(bytes(data))
    return float(pts * time_base)


def test_frames_shown_before_a_damaged_reference_are_never_stored(tmp_path):
    """5 bit flips in a P-frame: the B-frames shown before it are decoded from it, damaged,
    and come out first with no error; only the P-frame is flagged. None of them is stored,
    and the message names the span."""
    clean, damaged = tmp_path / "clean.mp4", tmp_path / "damaged.mp4"
    write_stamped_video(clean, duration=5, fps=30, size=(320, 240), container="mp4")
    flipped = _flip_bits_in_a_referenced_p_frame(clean, damaged)
    seconds = [round(i / 30, 4) for i in range(45, 105)]  # every frame, 1.5 s to 3.5 s
    truth = dict(extract_keyframes(clean, seconds))
    got = {}
    with pytest.raises(MissingKeyframes) as raised:
        for second, image in extract_keyframes(damaged, seconds):
            got[second] = image
    for second, image in got.items():
        assert np.array_equal(image, truth[second]), f"damaged frame stored for {second} s"
    assert got and min(raised.value.missing) < flipped - 0.01  # shown before it: dropped too
    assert sorted([*got, *raised.value.missing]) == seconds
    assert "not stored (they may rest on the damaged data)" in str(raised.value)


@pytest.mark.parametrize("content", ["text", "audio"])
def test_not_a_video_is_a_clear_error(tmp_path, content):
    path = tmp_path / f"{content}.mp4"
    if content == "text":
        path.write_text("not a video\n" * 100)
    else:
        cmd = [ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "sine=d=1", str(path)]
        subprocess.run(cmd, check=True)  # noqa: S603
    with pytest.raises(KeyframeError, match="not a decodable video") as raised:
        list(extract_keyframes(path, [0]))
    assert str(path) in str(raised.value)
    assert not isinstance(raised.value, MissingKeyframes)


def test_missing_file_and_bad_arguments(tmp_path, videos):
    with pytest.raises(KeyframeError, match="no such file"):
        list(extract_keyframes(tmp_path / "nope.mp4", [1]))
    path, _ = videos[KINDS[0]]
    for bad in ([-1], [float("nan")], ["1"], [True]):
        with pytest.raises(ValueError):
            list(extract_keyframes(path, bad))
    with pytest.raises(ValueError):
        list(extract_keyframes(path, [1], max_side=0))


def test_cli_writes_one_image_per_second_as_given(videos, tmp_path, capsys):
    path, times = videos[KINDS[8]]
    out = tmp_path / "out"
    assert main(["frames", str(path), "--seconds", "2,0.5,01", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.5.png", "01.png", "2.png"]
    for name, second in [("0.5.png", 0.5), ("01.png", 1), ("2.png", 2)]:
        image = np.asarray(Image.open(out / name).convert("RGB"))
        assert read_frame_stamp(image) == expected_frame(times, second)
    assert main(["frames", str(path), "--seconds", "1", "--out", str(out), "--format", "jpg",
                 "--max-side", "64"]) == 0
    assert Image.open(out / "1.jpg").size == (64, 48)
    assert "wrote 1 frame" in capsys.readouterr().out


def test_save_keyframes_is_the_library_call_behind_the_frames_verb(videos, tmp_path):
    path, times = videos[KINDS[8]]
    written = list(save_keyframes(path, {1: ["1", "01"], 0.5: ["0.5"]}, tmp_path,
                                  max_side=64, image_format="jpg"))
    assert [(w["second"], w["width"], w["height"]) for w in written] == [
        ("0.5", 64, 48), ("1", 64, 48), ("01", 64, 48)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.5.jpg", "01.jpg", "1.jpg"]
    assert [w["path"] for w in written] == [str(tmp_path / f"{n}.jpg") for n in ("0.5", "1", "01")]
    (tmp_path / "partial").mkdir()
    with pytest.raises(MissingKeyframes):
        for entry in save_keyframes(path, {1: ["a"], 99: ["b"]}, tmp_path / "partial"):
            written.append(entry)
    assert written[-1]["second"] == "a" and (tmp_path / "partial" / "a.jpg").is_file()


def test_cli_json_lists_the_frames_and_the_decoder(videos, tmp_path, capsys):
    path, _ = videos[KINDS[0]]
    out = tmp_path / "out"
    assert main(["frames", str(path), "--seconds", "2,0.5", "--out", str(out), "--json",
                 "--max-side", "80"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == [
        {"second": "0.5", "path": str(out / "0.5.png"), "width": 80, "height": 60},
        {"second": "2", "path": str(out / "2.png"), "width": 80, "height": 60}]
    assert printed["decoder"] == decoder_info()
    assert printed["decoder"]["engine"] == "pyav" and "libavcodec" in printed["decoder"]


@pytest.mark.parametrize("args, message", [
    (["--seconds", "1,x"], "'x' is not a second"),
    (["--seconds", "-1"], "'-1' is not a second"),
    (["--seconds", "1,99"], "no frame for second(s) 99"),
    (["--seconds", "1", "--max-side", "0"], "--max-side must be at least 1"),
])
def test_cli_errors_are_one_line_without_traceback(videos, tmp_path, capsys, args, message):
    path, _ = videos[KINDS[0]]
    assert main(["frames", str(path), "--out", str(tmp_path / "out"), *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ava-keyframes: error: ") and message in error
    assert "Traceback" not in error


def test_cli_out_that_is_a_file_is_one_line(videos, tmp_path, capsys):
    path, _ = videos[KINDS[0]]
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert main(["frames", str(path), "--out", str(taken), "--seconds", "1"]) == 2
    error = capsys.readouterr().err
    assert error == f"ava-keyframes: error: {taken}: exists and is not a folder\n"
    assert taken.read_text() == "not a folder"


def test_cli_names_a_missing_video(tmp_path, capsys):
    missing = tmp_path / "missing.mp4"
    assert main(["frames", str(missing), "--seconds", "1", "--out", str(tmp_path)]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err


def test_ctrl_c_during_extraction_ends_the_process_cleanly(videos, tmp_path):
    """Ctrl-C between two frames: KeyboardInterrupt reaches the caller, the decoder closes,
    and the interpreter exits normally (the ffmpeg-process design aborted with 'Fatal Python
    error: _enter_buffered_busy', rc 134)."""
    source, _ = videos[KINDS[4]]
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal\n"
        "from ava_keyframes.frames import extract_keyframes\n"
        "try:\n"
        f"    for second, image in extract_keyframes({str(source)!r}, [0, 1, 2]):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted at', second)\n"
        "    sys.exit(130)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,  # noqa: S603
                            timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stdout == "interrupted at 0\n"
    assert "Fatal" not in result.stderr and "Traceback" not in result.stderr



@pytest.mark.parametrize("kind", [KINDS[0], KINDS[4]], ids=_kind_id)
def test_non_utf8_metadata_opens_on_every_pyav(videos, tmp_path, kind):
    """A title that is not UTF-8 (old rips carry Latin-1 tags) must not stop decoding: PyAV
    before 19 needs ``metadata_errors``, PyAV 19 dropped that argument."""
    source, times = videos[kind]
    out = tmp_path / f"latin1{source.suffix}"
    subprocess.run([ffmpeg_binary().encode(), b"-v", b"error", b"-i", bytes(source),  # noqa: S603
                    b"-c", b"copy", b"-metadata", b"title=Caf\xe9 \xff", bytes(out)], check=True)
    assert stamps(out, [1, 2]) == [(1, expected_frame(times, 1)), (2, expected_frame(times, 2))]
