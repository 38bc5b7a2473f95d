"""Beam's portable runner on this machine, as separate processes: Beam's Python job server and
an external SDK worker pool (the Fn API that Flink, Spark and Dataflow workers speak). Used by
the cluster tests and ``benchmarks/build.py``; a way to try a cluster build's path locally.

The worker pool starts ``python`` from its own PATH for each worker, in its own environment
and working directory: :class:`LocalCluster` starts it with the environment it is given.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_START_SECONDS = 120.0  # for a server to open its port (it imports Beam first)


def free_port() -> int:
    """A port nothing listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalCluster:
    """A job server and a worker pool on free ports, their logs in ``folder``; a context
    manager that stops both (and the workers the pool started) whatever happens.

    ``worker_env``: the pool's whole environment (its PATH decides the workers' ``python``);
    ``folder`` is also the pool's working directory.
    """

    def __init__(self, folder: str | os.PathLike, worker_env: dict[str, str]):
        self.folder, self.worker_env = Path(folder), worker_env
        self.job_port, self.pool_port = free_port(), free_port()
        self._servers: list[subprocess.Popen] = []

    def options(self, *extra: str) -> str:
        """``--beam_pipeline_options`` that send a build here (``extra``: more key=value)."""
        return ",".join([
            "runner=PortableRunner", f"job_endpoint=localhost:{self.job_port}",
            "environment_type=EXTERNAL", f"environment_config=localhost:{self.pool_port}",
            *extra])

    def __enter__(self) -> LocalCluster:
        try:
            self._start("apache_beam.runners.portability.local_job_service_main",
                        ["--port", str(self.job_port)], {**os.environ}, self.job_port)
            self._start("apache_beam.runners.worker.worker_pool_main",
                        ["--service_port", str(self.pool_port)], self.worker_env,
                        self.pool_port)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """SIGINT first: the pool then stops its workers and waits for them, so their CPU
        time reaches this process's children times once the pool is waited for."""
        for server in reversed(self._servers):
            _stop(server)
        self._servers.clear()

    def _start(self, module: str, args: list[str], env: dict[str, str], port: int) -> None:
        log = self.folder / f"{module.rsplit('.', 1)[-1]}-{port}.log"
        with log.open("w") as out:
            server = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
                [sys.executable, "-m", module, *args], env=env, cwd=self.folder, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self._servers.append(server)
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"{module} exited ({server.returncode}): see {log}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{module} did not open port {port} in {_START_SECONDS:g} s: "
                           f"see {log}")


def _stop(server: subprocess.Popen) -> None:
    """Interrupt ``server``'s process group, then kill it if it is still there in 20 s."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, None)):
        if server.poll() is not None:
            break
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    server.wait()
    _reap_group(server.pid)


def _reap_group(group: int) -> None:
    """Kill what is left of the group (workers of a pool that died without stopping them)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
