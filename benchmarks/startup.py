"""Start-up cost of the light `ava-keyframes` verbs, against the interpreter and TFDS's import.

`python benchmarks/startup.py [--runs 7]` runs each command as a fresh process on the real
AVA files in `tests/data/ava/` and prints the median and fastest wall time, each as a ratio
to a bare `python -c pass` measured in the same run (these machines are noisy: compare the
ratios). `import tensorflow_datasets` is what every verb paid before imports became lazy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "ava"
CLI = "from ava_keyframes.cli import main; import sys; sys.exit(main(sys.argv[1:]))"
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "ava-keyframes labelmap (80 classes)": ["-c", CLI, "labelmap",
                                            str(DATA / "ava_action_list_v2.2.pbtxt")],
    "ava-keyframes inspect (341 rows)": [
        "-c", CLI, "inspect", str(DATA / "ava_val_v2.2_excerpt_1j20qq1JyX4_0902-1014.csv")],
    "ava-keyframes inspect (93,399 rows)": [
        "-c", CLI, "inspect", str(DATA / "ava_val_v2.1_person_movement_subset.csv")],
    "python -c 'import tensorflow_datasets'": ["-c", "import tensorflow_datasets"],
}


def wall_times(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)  # noqa: S603
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    results = {name: wall_times(args, runs) for name, args in COMMANDS.items()}
    base = statistics.median(results["python -c pass"])
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'x python':>9}")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"{name:<40} {median:9.3f} {min(times):7.3f} {median / base:9.1f}")


if __name__ == "__main__":
    main()
