"""Where the ffmpeg binary comes from, and the one check that a file is a decodable video.

Order: the ``FFMPEG_BINARY`` environment variable, then ``ffmpeg`` on PATH, then the
binary shipped inside the ``imageio-ffmpeg`` wheel (so ``pip`` alone provides ffmpeg).
There is no ffprobe anywhere in this package: everything is read from ffmpeg itself.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path


class VideoError(Exception):
    """A video file that ffmpeg cannot open or decode; the message names the file."""


@functools.cache
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable to run (cached for the process)."""
    configured = os.environ.get("FFMPEG_BINARY")
    if configured:
        if not (Path(configured).is_file() or shutil.which(configured)):
            raise VideoError(f"FFMPEG_BINARY={configured!r} is not an executable file")
        return configured
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def check_video(path: str | os.PathLike) -> None:
    """Raise VideoError unless ffmpeg decodes at least one video frame of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path.resolve()),
           "-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # noqa: S603
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
        raise VideoError(f"{path}: not a decodable video ({reason})")
