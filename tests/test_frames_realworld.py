"""Keyframes from a real-world encode this project did not make, remuxed and re-encoded into
the hard cases (audio before video, edit lists, open GOPs, B-pyramids, VFR, 23.976 fps, mkv,
webm/VP9, AV1), each answer checked against an independent full decode by the ffmpeg command
line (``-f framemd5``: every frame's pts and the MD5 of its RGB pixels), and against another
program named ``ffmpeg`` first on PATH."""

from __future__ import annotations

import bisect
import hashlib
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import pytest

import ava_keyframes.frames as frames
from ava_keyframes.frames import MissingKeyframes, extract_keyframes
from ava_keyframes.media import Video, VideoError, check_video, ffmpeg_binary, open_video

SOURCE = Path(__file__).parent / "data" / "video" / "bigbuckbunny.mp4"
SMALL = ["-vf", "scale=320:180"]
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]


def ffmpeg(*args: str | Path) -> None:
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True)  # noqa: S603


def _audio_first(out: Path) -> None:
    """The video delayed 0.4 s behind the audio (as in many remuxed movies)."""
    ffmpeg("-i", SOURCE, "-itsoffset", "0.4", "-i", SOURCE, "-map", "1:v", "-map", "0:a",
           "-c", "copy", out)


def _cover_art_first(out: Path) -> None:
    """A cover picture: a second video stream, one picture (as many rips carry)."""
    cover = out.with_suffix(".png")
    ffmpeg("-f", "lavfi", "-i", "color=red:s=64x64", "-frames:v", "1", cover)
    ffmpeg("-i", cover, "-i", SOURCE, "-map", "0", "-map", "1", "-c", "copy",
           "-disposition:v:0", "attached_pic", out)


# name -> (file name, how to make it from SOURCE; None: SOURCE itself)
CASES = {
    "original-mp4-720p-25fps-aac": ("bbb.mp4", None),
    "audio-first-0.4s-mp4": ("audio_first.mp4", _audio_first),
    "audio-first-0.4s-mkv": ("audio_first.mkv", _audio_first),
    "cover-art-first-mp4": ("cover_art.mp4", _cover_art_first),
    "edit-list-mp4": ("edit_list.mp4", lambda out: ffmpeg("-ss", "1.3", "-i", SOURCE,
                                                          "-c", "copy", out)),
    "offset-start-10.25s-mkv": ("offset.mkv", lambda out: ffmpeg(
        "-i", SOURCE, "-c", "copy", "-output_ts_offset", "10.25", out)),
    "b-pyramid-mp4": ("b_pyramid.mp4", lambda out: ffmpeg(
        "-i", SOURCE, *SMALL, *X264, "-bf", "3", "-x264-params",
        "b-pyramid=normal:b-adapt=0:keyint=30", "-an", out)),
    "open-gop-mkv": ("open_gop.mkv", lambda out: ffmpeg(
        "-i", SOURCE, *SMALL, *X264, "-bf", "3", "-x264-params",
        "open-gop=1:keyint=20:min-keyint=20:scenecut=0", "-c:a", "copy", out)),
    "23.976fps-mkv": ("ntsc_film.mkv", lambda out: ffmpeg(
        "-i", SOURCE, "-vf", "scale=320:180,setpts=N*1001/24000/TB", "-r", "24000/1001",
        *X264, "-an", out)),
    "vfr-mp4": ("vfr.mp4", lambda out: ffmpeg(
        "-i", SOURCE, "-vf", r"scale=320:180,select=not(eq(mod(n\,3)\,1))",
        "-fps_mode", "vfr", *X264, "-an", out)),
    "vp9-altref-webm": ("vp9.webm", lambda out: ffmpeg(
        "-i", SOURCE, *SMALL, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
        "-b:v", "300k", "-g", "25", "-auto-alt-ref", "1", "-lag-in-frames", "16", "-an", out)),
    "av1-mkv": ("av1.mkv", lambda out: ffmpeg(
        "-i", SOURCE, *SMALL, "-c:v", "libaom-av1", "-cpu-used", "8", "-b:v", "200k",
        "-g", "30", "-an", out)),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("realworld")
    made = {}
    for name, (file_name, make) in CASES.items():
        made[name] = SOURCE if make is None else folder / file_name
        if make is not None:
            make(made[name])
    return made


@pytest.fixture(scope="module")
def references(cases) -> dict[str, list[tuple[Fraction, str]]]:
    return {name: reference_frames(path) for name, path in cases.items()}


def reference_frames(path: Path) -> list[tuple[Fraction, str]]:
    """Every frame as (seconds from the first frame, MD5 of its RGB24 pixels), from a full
    decode by the ffmpeg command line with the original timestamps kept."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-copyts", "-i",
           str(path), "-map", "0:V:0", "-fps_mode", "passthrough", "-enc_time_base", "demux",
           "-pix_fmt", "rgb24", "-f", "framemd5", "-"]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: S603
    time_base, found = None, []
    for line in lines.splitlines():
        if line.startswith("#tb 0:"):
            time_base = Fraction(line.split(":")[1].strip())
        elif not line.startswith("#"):
            fields = [field.strip() for field in line.split(",")]
            found.append((int(fields[2]) * time_base, fields[5]))
    start = found[0][0]
    return [(time - start, digest) for time, digest in found]


def probe_seconds(reference: list[tuple[Fraction, str]]) -> list[float]:
    """Every 0.1 s to past the end, and times on, just below and just above frames."""
    end = float(reference[-1][0])
    seconds = [round(x * 0.1, 1) for x in range(int(end * 10) + 5)]
    for time, _ in reference[1::9]:
        seconds += [round(float(time), 4), round(float(time) - 1e-4, 4),
                    round(float(time) + 1e-4, 4)]
    return sorted(set(seconds))


def expected(reference: list[tuple[Fraction, str]], seconds: list[float]
             ) -> tuple[dict[float, str], list[float]]:
    """The rule, applied to the reference: {second: MD5 of its frame}, and seconds with none."""
    times = [time for time, _ in reference]
    answered, missing = {}, []
    for second in seconds:
        index = bisect.bisect_left(times, Fraction(repr(second)))
        if index < len(reference):
            answered[second] = reference[index][1]
        else:
            missing.append(second)
    return answered, missing


def extracted(path: Path, seconds: list[float], **options) -> tuple[dict[float, str], list]:
    got = {}
    try:
        for second, image in extract_keyframes(path, seconds, **options):
            got[second] = hashlib.md5(image.tobytes()).hexdigest()  # noqa: S324
    except MissingKeyframes as error:
        return got, error.missing
    return got, []


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seek_gap", [frames.SEEK_GAP, 0], ids=["runs", "seek-each"])
def test_every_answer_matches_an_independent_full_decode(cases, references, name, seek_gap,
                                                        monkeypatch):
    monkeypatch.setattr(frames, "SEEK_GAP", seek_gap)
    reference = references[name]
    seconds = probe_seconds(reference)
    if seek_gap == 0:  # a seek and a decode from the key frame before each: fewer seconds
        seconds = sorted({*seconds[::len(seconds) // 12], *seconds[-3:]})
    want, want_missing = expected(reference, seconds)
    got, missing = extracted(cases[name], seconds)
    wrong = sorted(s for s in want if got.get(s) != want[s])
    assert not wrong, f"{len(wrong)} of {len(want)} seconds wrong, first {wrong[:5]}"
    assert missing == want_missing and want_missing


@pytest.mark.parametrize("name", ["b-pyramid-mp4", "open-gop-mkv", "vp9-altref-webm"])
def test_frames_nobody_asked_for_are_not_decoded_and_answers_stay(cases, name, monkeypatch):
    """Non-reference frames that answer no second are skipped (x264's B-frames: about
    half), with answers identical to decoding every frame."""
    decoded = []
    original = Video.decoded

    def counting(self, packet, after):
        for item in original(self, packet, after):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(Video, "decoded", counting)
    seconds = [0.5, 1.5, 3, 4.2]
    results = {}
    for skip in (False, True):
        monkeypatch.setattr(frames, "SKIP_UNWANTED", skip)
        decoded.clear()
        results[skip] = (extracted(cases[name], seconds), len(decoded))
    assert results[True][0] == results[False][0]
    if name != "vp9-altref-webm":  # libvpx's realtime VP9 has no non-reference frames
        assert results[True][1] < 0.75 * results[False][1]


def test_the_cases_are_what_they_claim(cases, references):
    """The remuxes really have their hard part: a late video start, an edit list, B-frames."""
    with open_video(cases["audio-first-0.4s-mp4"]) as video:
        assert video.start == Fraction(2, 5)  # video's first frame 0.4 s after the audio's
    with open_video(cases["audio-first-0.4s-mkv"]) as video:
        assert video.start == Fraction(2, 5)
    with open_video(cases["offset-start-10.25s-mkv"]) as video:
        assert video.start == Fraction(41, 4)
    with av.open(str(cases["edit-list-mp4"])) as container:
        first_packet = next(container.demux(video=0))
        assert first_packet.pts < 0 and first_packet.is_discard  # an edit list hides it
    # the first frame shown is the original's first at or after 1.3 s, mid-GOP
    assert references["edit-list-mp4"][0][1] == references["original-mp4-720p-25fps-aac"][33][1]
    with av.open(str(cases["cover-art-first-mp4"])) as container:
        assert [bool(s.disposition & av.stream.Disposition.attached_pic)
                for s in container.streams.video] == [False, True]
    vfr = references["vfr-mp4"]
    assert len({b[0] - a[0] for a, b in zip(vfr, vfr[1:], strict=False)}) > 1


def test_a_window_with_the_original_origin_answers_as_the_whole_file(cases, tmp_path):
    """A stream copy of part of a video, timestamps kept: with the original's origin, its
    seconds are the whole file's; seconds outside it are reported, never answered wrongly."""
    whole = cases["b-pyramid-mp4"]
    window = tmp_path / "window.mkv"
    ffmpeg("-ss", "2.1", "-to", "3.9", "-copyts", "-i", whole, "-c", "copy", window)
    with open_video(whole) as video:
        origin = video.start
    seconds = [round(x * 0.1, 1) for x in range(55)]
    want, _ = extracted(whole, seconds)
    got, missing = extracted(window, seconds, origin=origin)
    assert got and all(got[s] == want[s] for s in got)
    assert 0 in missing and 5.4 in missing and sorted([*got, *missing]) == seconds
    with pytest.raises(MissingKeyframes, match=r"this file holds the video from 1\.200 s"):
        list(extract_keyframes(window, [1.5, 5], origin=origin))


def test_check_video_through_until(cases, tmp_path):
    check_video(cases["audio-first-0.4s-mkv"], until=4)
    check_video(cases["b-pyramid-mp4"])
    with pytest.raises(VideoError, match="ends at"):
        check_video(cases["b-pyramid-mp4"], until=60)
    truncated = tmp_path / "truncated.mkv"
    data = cases["open-gop-mkv"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=str(truncated)):
        check_video(truncated, until=5)
    with pytest.raises(VideoError, match="truncated: the video ends at"):
        check_video(truncated)  # no seconds named: the header's duration is the bar


def test_another_ffmpeg_first_on_path_changes_nothing(cases, references, tmp_path):
    """A program named ffmpeg first on PATH (and in FFMPEG_BINARY) that prints stream lines
    without `start` and garbage: a subprocess gets the same frames, byte for byte."""
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "  Duration: 00:00:01.00, bitrate: 1 kb/s" >&2
        echo "  Stream #0:0: Video: h264, yuv420p, 16x16, 1 fps" >&2
        echo "n:0 pts:999999 pts_time:9 s:16x16 garbage" >&2
        exit 0
        """))
    fake.chmod(0o755)
    script = textwrap.dedent("""\
        import hashlib, sys
        from ava_keyframes.frames import extract_keyframes
        from ava_keyframes.media import ffmpeg_binary
        print(ffmpeg_binary())
        for second, image in extract_keyframes(sys.argv[1], [0, 0.5, 1, 2.04, 3.9]):
            print(second, hashlib.md5(image.tobytes()).hexdigest())
        """)
    path = cases["audio-first-0.4s-mp4"]
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "FFMPEG_BINARY": str(fake)}
    env.pop("IMAGEIO_FFMPEG_EXE", None)
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=env,  # noqa: S603
                            capture_output=True, text=True, check=True)
    binary, *lines = result.stdout.splitlines()
    assert binary == ffmpeg_binary() != str(fake)
    here, _ = extracted(path, [0, 0.5, 1, 2.04, 3.9])
    assert lines == [f"{second} {digest}" for second, digest in here.items()]
    assert here == expected(references["audio-first-0.4s-mp4"], [0, 0.5, 1, 2.04, 3.9])[0]
