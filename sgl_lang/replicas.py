"""`sgl serve --replicas N`: N `sgl serve` workers on their own ports behind SGLang's router
(`sglang-router`, docs/scale.md), started together and stopped together."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from sgl_lang.config import CONFIG_NAME, ENGINE_KEYS, RunConfig
from sgl_lang.errors import SglError

WORKER_HOST = "127.0.0.1"  # workers answer only the router (and this machine)
STARTUP_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 10.0
CIRCUIT_FAILURES = 2  # failed requests that take a worker out of the router's rotation


class ReplicaError(SglError):
    """A worker or the router could not start."""

    kind = "replicas error"


@dataclass(frozen=True)
class ReplicaPlan:
    """What to start: `num_replicas` workers on the ports after `port`, each `sgl serve` with
    `worker_flags`, and the router on `host:port` with `router_policy`."""

    num_replicas: int
    host: str
    port: int
    router_policy: str = "cache_aware"
    worker_flags: tuple[str, ...] = ()

    @property
    def worker_ports(self) -> range:
        return range(self.port + 1, self.port + 1 + self.num_replicas)

    @property
    def worker_urls(self) -> list[str]:
        return [f"http://{WORKER_HOST}:{port}" for port in self.worker_ports]

    @property
    def router_url(self) -> str:
        return f"http://{WORKER_HOST if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"

    def worker_command(self, port: int) -> list[str]:
        serve = [sys.executable, "-m", "sgl_lang.cli", "serve"]
        return [*serve, "--host", WORKER_HOST, "--port", str(port), *self.worker_flags]

    def router_command(self, metrics_port: int) -> list[str]:
        return router_command(
            self.host, self.port, self.router_policy, self.worker_urls, metrics_port
        )


def router_command(
    host: str, port: int, policy: str, worker_urls: Sequence[str], metrics_port: int
) -> list[str]:
    """sglang-router on `host:port` over `worker_urls`, its Prometheus metrics on `metrics_port`."""
    return [
        *(sys.executable, "-m", "sglang_router.launch_router"),
        *("--host", host, "--port", str(port), "--policy", policy),
        *("--prometheus-port", str(metrics_port), "--log-level", "warn"),
        # a worker that fails requests is left out at once (the default waits for 10
        # failures, after a request's own 5 retries may all have gone to it)
        *("--cb-failure-threshold", str(CIRCUIT_FAILURES)),
        *("--worker-urls", *worker_urls),
    ]


def engine_config_file(config: RunConfig, folder: Path) -> Path:
    """An `sgl.toml` in `folder` with the engine keys and model of `config`: what every
    worker is started with (`--config`), so that workers and a single `sgl serve` agree."""
    keys = ("model", *ENGINE_KEYS)
    values = {key: getattr(config, key) for key in keys if getattr(config, key) is not None}
    lines = [
        f"{key} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for key, v in values.items()
    ]
    path = folder / CONFIG_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Replicas:
    """The running workers and router of a `ReplicaPlan`: `start()` returns once the router
    answers; `stop()` ends them all (router first)."""

    def __init__(self, plan: ReplicaPlan) -> None:
        self.plan = plan
        self.workers: list[subprocess.Popen[bytes]] = []
        self.router: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the workers, wait for their /health, then the router, and wait for it."""
        try:
            for port in self.plan.worker_ports:
                command = self.plan.worker_command(port)
                self.workers.append(spawn(command, None, f"worker-{port}"))
            for url, worker in zip(self.plan.worker_urls, self.workers, strict=True):
                wait_ready(f"{url}/health", worker)
            command = self.plan.router_command(free_port())
            self.router = spawn(command, None, f"router-{self.plan.port}")
            wait_ready(f"{self.plan.router_url}/get_model_info", self.router)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the router and every worker; kill those still running after a while."""
        stop([p for p in (self.router, *self.workers) if p is not None])

    def wait(self) -> int:
        """Block until the router exits; its exit code."""
        if self.router is None:
            raise ReplicaError("the router is not started")
        return self.router.wait()


def serve_replicas(plan: ReplicaPlan, config: RunConfig) -> int:
    """`sgl serve --replicas N`: start everything, print where, serve until SIGINT or
    SIGTERM (exit code 0) or until the router exits (its code), then stop everything."""
    if importlib.util.find_spec("sglang_router") is None:
        raise ReplicaError(
            "--replicas needs SGLang's router", hint="pip install 'sgl-lang[router]'"
        )
    with tempfile.TemporaryDirectory(prefix="sgl-replicas-") as folder:
        config_flags = ("--config", str(engine_config_file(config, Path(folder))))
        plan = dataclasses.replace(plan, worker_flags=config_flags + plan.worker_flags)
        replicas = Replicas(plan)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            replicas.start()
            workers = " ".join(plan.worker_urls)
            print(f"router ({plan.router_policy}) on {plan.router_url}; workers: {workers}")
            return replicas.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            replicas.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def spawn(command: Sequence[str], log_dir: Path | None, name: str) -> subprocess.Popen[bytes]:
    """Start `command`, its output in `log_dir/NAME.log` (None: this process's output)."""
    if log_dir is None:
        return subprocess.Popen(command)
    with open(log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate `processes`, then kill those still running after `STOP_TIMEOUT_S`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll `url` until it answers 200; `process` exiting first is a `ReplicaError`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ReplicaError(f"the process serving {url} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_INTERVAL_S)
    raise ReplicaError(f"{url} did not answer within {STARTUP_TIMEOUT_S:.0f} s")


def free_port() -> int:
    """A free local port (the router's Prometheus exporter would otherwise share 29000)."""
    with socket.socket() as sock:
        sock.bind((WORKER_HOST, 0))
        return int(sock.getsockname()[1])
