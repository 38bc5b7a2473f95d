"""The H.264 clip encoder per clip (issue 27): libx264's CPU, decoding CPU, bytes and PSNR.

Three encoders of the same clips:

- ``build``: ``clips.encode`` as the build runs it (constant QP 20, no B-frames, no
  deblocking; one encoder per thread, kept between clips, a forced IDR frame at each start);
- ``new each``: the same settings, a new encoder for every clip (what keeping one saves);
- ``sixth round``: the settings of the sixth round (CRF 17.5, two B-frames, deblocking), a
  new encoder for every clip, as the build then ran it.

Sources: the film (``tests/data/video/bigbuckbunny.mp4``, 1280x720, untagged: read as
BT.601), the film tagged BT.709 (``build_clips.bt709_film``), the film re-encoded to
854x480 VP9 tagged BT.709, keyframes 1..4 of each; and the synthetic corpus of
``build_clips.py`` (640x360), its first ``--seconds`` keyframes of each of ``--videos``.
Clips 8 x 8 and 32 x 2 at a shorter side of 256 (``extract_clips``: planes to encode, RGB
as the reference). CPU: this thread's time to encode every clip of a source and shape, and
to decode the streams (``clips.decode_bytes``), median of ``--repeat`` interleaved passes.
Printed per source and shape: ms per clip, each against ``sixth round``; clip bytes against
``sixth round`` and against the clips' JPEG q95 frames (the build's ``jpeg`` encoding); the
lowest and mean per-clip PSNR margin over the JPEG frames' (the quality bar: -1 dB).

Usage: python benchmarks/clip_encoder.py [--videos 4] [--seconds 30] [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from build_clips import FILM, bt709_film, synthetic_corpus

SIXTH_ROUND = {"crf": "17.5", "tune": "psnr", "preset": "superfast", "bf": "2",
               "x264-params": "cabac=0:b-pyramid=none", "threads": "1"}
SHAPES = ((8, 8), (32, 2))


def new_each(options: dict[str, str]):
    """An encoder of ``clips.encode``'s signature that makes a new libx264 context per clip."""
    from ava_keyframes import clips

    def encode(frames: list[av.VideoFrame], colour: tuple[int, int]) -> bytes:
        context = clips.open_encoder(frames[0].width, frames[0].height, colour,
                                     {**options, "g": str(len(frames))})
        packets = []
        for pts, frame in enumerate(frames):
            frame.pts, frame.time_base = pts, context.time_base
            frame.pict_type = av.video.frame.PictureType.NONE
            packets += context.encode(frame)
        packets += context.encode(None)
        return b"".join(bytes(packet) for packet in packets)
    return encode


def sources(root: Path, videos: int, seconds: int) -> dict[str, tuple[Path, list[int]]]:
    from ava_keyframes.media import ffmpeg_binary

    vp9 = root / "film_480p_vp9.webm"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(FILM), "-vf", "scale=-2:480",  # noqa: S603
                    "-c:v", "libvpx-vp9", "-crf", "30", "-b:v", "0", "-colorspace", "bt709",
                    "-color_primaries", "bt709", "-color_trc", "bt709", str(vp9)], check=True)
    film = {"film 720p": FILM, "film 720p BT.709": bt709_film(root), "film 480p VP9": vp9}
    found = {name: (path, [1, 2, 3, 4]) for name, path in film.items()}
    corpus = synthetic_corpus(root, videos, seconds)
    for path in sorted((corpus / "videos").glob("*.mp4")):
        found[f"synthetic {path.stem}"] = (path, list(range(902, 902 + seconds)))
    return found


def measure(path: Path, seconds: list[int], shape: tuple[int, int], repeat: int) -> dict:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from ava_keyframes import clips
    from ava_keyframes.frames import extract_clips

    def extract(planar: bool) -> list:
        return list(extract_clips(path, seconds, length=shape[0], stride=shape[1],
                                  planar=planar))

    planes, reference = extract(True), extract(False)
    jpeg = tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg")
    jpeg_bytes, jpeg_psnr = 0, []
    for clip in reference:
        stored = jpeg.encode_example(clip.frames)
        jpeg_bytes += sum(map(len, stored))
        jpeg_psnr.append(clips.psnr(np.stack([tf.io.decode_jpeg(x).numpy() for x in stored]),
                                    clip.frames))
    encoders = {"build": lambda: clips.encode, "new each": lambda: new_each(clips.X264_OPTIONS),
                "sixth round": lambda: new_each(SIXTH_ROUND)}
    times: dict[str, dict[str, list[float]]] = {name: {"encode": [], "decode": []}
                                                for name in encoders}
    streams: dict[str, list[bytes]] = {}
    margins: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeat):
        for name, make in encoders.items():
            encode, start = make(), time.thread_time()
            streams[name] = [encode(clip.frames, clip.colour) for clip in planes]
            times[name]["encode"].append(time.thread_time() - start)
            spent = 0.0
            for stream, clip, bar in zip(streams[name], reference, jpeg_psnr, strict=True):
                start = time.thread_time()
                frames = clips.decode_bytes(stream)
                spent += time.thread_time() - start
                if len(margins[name]) < len(reference):  # the first pass
                    margins[name].append(clips.psnr(frames, clip.frames) - bar)
            times[name]["decode"].append(spent)
    return {name: {"encode": np.median(t["encode"]) / len(planes),
                   "decode": np.median(t["decode"]) / len(planes),
                   "bytes": sum(map(len, streams[name])), "jpeg_bytes": jpeg_bytes,
                   "margins": margins[name]} for name, t in times.items()}


def report(source: str, shape: tuple[int, int], got: dict) -> None:
    old = got["sixth round"]
    for name, r in got.items():
        print(f"{source:<28}{shape[0]:>3} x {shape[1]:<3}{name:<13}"
              f"{r['encode'] * 1e3:>7.1f} ms {r['encode'] / old['encode']:>5.2f}x"
              f"{r['decode'] * 1e3:>7.1f} ms {r['decode'] / old['decode']:>5.2f}x"
              f"{r['bytes'] / old['bytes']:>8.2f}x{r['bytes'] / r['jpeg_bytes']:>8.3f}x"
              f"{min(r['margins']):>+8.2f}{np.mean(r['margins']):>+7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        found = sources(Path(root), args.videos, args.seconds)
        print(f"{'source':<28}{'shape':<9}{'encoder':<13}{'encode / clip':>16}"
              f"{'decode / clip':>16}{'bytes':>9}{'/ JPEG':>9}{'lowest':>8}{'mean':>7}")
        for source, (path, seconds) in found.items():
            for shape in SHAPES:
                report(source, shape, measure(path, seconds, shape, args.repeat))


if __name__ == "__main__":
    main()
