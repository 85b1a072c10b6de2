"""A local OpenAI-compatible LLM server, started and stopped by the project (`--llm local`).

Researchers without an API budget, or who cannot send data out, describe heads with an open-weight
model on their own machine. This module does not serve anything itself: it starts an existing server
from the ecosystem as a child process on a free localhost port, waits until it answers, hands its URL
to the LLM client, and stops it at the end, also on Ctrl-C or an error (it is a context manager).

Three backends:

- `llama-cpp` (default): llama-cpp-python's server (`pip install "llama-cpp-python[server]"`, which
  compiles llama.cpp). It reads a GGUF file directly with its quantised kernels, and its JSON mode
  is grammar-constrained: the answer is always a JSON object. It serves one request at a time and
  keeps the KV cache of the previous prompt, so a prompt that starts with the same instructions
  (ours do) skips their prefill. The book's committed answers come from it.
- `llama-server`: llama.cpp's own server binary (`make setup-llm-server` builds it from the llama.cpp
  that the same llama-cpp-python release vendors). Same GGUF, kernels and grammar-constrained JSON,
  with no Python in the token loop. On 2 cores it described 15 SmolLM2 heads 1.13x faster (16.2
  against 18.3 s per head; prefill of the ~700 tokens each head does not share dominates both). It
  decodes the requests in flight together, one slot each (`ServerSpec.slots`): a step reads the
  weights once for all of them. That pays where decoding waits on memory (a 2-core VM copying
  16 GB/s: 8 slots 1.46x, 44.9 -> 30.8 s per head, looping answers no longer blocking the rest) and
  costs little where it waits on arithmetic (another 2-core machine: 2 slots 0.96x).
- `transformers`: `transformers serve` (transformers' `serving` extra; pure Python, float32 on the
  CPU), for a saved model folder; it has continuous batching, so concurrent requests share forwards.

Every way to fail names its fix in one line (`LLMServerError`): backend not installed, port taken,
server exits before it is ready or stops answering in time, server dies mid-run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mapslib.errors import MapsError

BACKENDS = ("llama-cpp", "llama-server", "transformers")
GGUF_BACKENDS = ("llama-cpp", "llama-server")  # serve a .gguf file, JSON constrained by a grammar
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"  # Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M
LOCAL_KEY = "local"  # a local server checks no key; the openai client needs a non-empty one
INSTALL = {
    "llama-cpp": 'make setup-llm (pip install "llama-cpp-python[server]", compiling llama.cpp '
    "with the fix GCC 12 needs on CPUs with AMX, tools/gcc12_amx_tilecfg.h)",
    "llama-server": "make setup-llm-server (builds llama.cpp's llama-server into the venv, 6-8 "
    "min; needs cmake and a C++ compiler), or put a llama-server binary on PATH or in "
    "$MAPSLIB_LLAMA_SERVER",
    "transformers": 'pip install "transformers[serving]"',
}


# A llama.cpp built by GCC 12 on a CPU with AMX dies of SIGILL at its first tile instruction (the
# compiler drops the tile shapes; tools/gcc12_amx_tilecfg.h); the Makefile's builds work around it.
_ILLEGAL = ": it died of an illegal instruction, so it was built for CPU instructions this machine "
_LLAMA_CPP = _ILLEGAL + "cannot run (llama.cpp built by GCC 12 on a CPU with AMX does this); "
SIGILL_HINT = {
    "llama-cpp": _LLAMA_CPP
    + "rebuild it with: pip uninstall -y llama-cpp-python && make setup-llm",
    "llama-server": _LLAMA_CPP
    + "rebuild it with: rm .venv/bin/llama-server && make setup-llm-server",
    "transformers": _ILLEGAL + "cannot run; reinstall torch and transformers for this CPU",
}


class LLMServerError(MapsError):
    """The local LLM server could not be used: not installed, no port, did not start, or died."""


@dataclass(frozen=True)
class ServerSpec:
    """What to serve and how: the backend, the model file or folder, and the name requests use."""

    backend: str
    model_path: str
    name: str  # the model name requests carry and the answer cache is keyed by
    port: int | None = None  # None: a free port
    context: int = 4096  # tokens of context per request (llama.cpp backends)
    threads: int | None = None  # CPU threads (llama.cpp backends); None: the server's default
    slots: int = 1  # requests llama-server decodes together (continuous batching)
    startup_timeout: float = 600.0  # seconds to wait for the first healthy answer


def backend_installed(backend: str) -> bool:
    """Whether the backend's server can be started from this Python."""
    if backend == "llama-cpp":
        return importlib.util.find_spec("llama_cpp") is not None and _has("uvicorn", "fastapi")
    if backend == "llama-server":
        return llama_server_binary() is not None
    if backend == "transformers":
        return (
            _has("uvicorn", "fastapi")
            and shutil.which("transformers", path=_bin_path()) is not None
        )
    raise LLMServerError(
        f"unknown LLM server backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    )


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def llama_server_binary() -> str | None:
    """llama.cpp's server: $MAPSLIB_LLAMA_SERVER if set, else `llama-server` in the venv or on PATH."""
    if os.environ.get("MAPSLIB_LLAMA_SERVER"):
        path = os.environ["MAPSLIB_LLAMA_SERVER"]
        return path if os.access(path, os.X_OK) else None
    return shutil.which("llama-server", path=_bin_path())


def _bin_path() -> str:
    """PATH with this Python's own bin folder first, where its console scripts live."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def require_backend(backend: str) -> None:
    """Fail with the install command when the backend is missing."""
    if not backend_installed(backend):
        raise LLMServerError(
            f"the {backend} LLM server is not installed in this environment; install it with: "
            f"{INSTALL[backend]}"
        )


def free_port() -> int:
    """A localhost port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    """Whether something already listens on localhost:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_command(spec: ServerSpec, port: int) -> list[str]:
    """The command line that starts the backend's server on `port`."""
    if spec.backend == "llama-cpp":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", spec.model_path]
        cmd += ["--model_alias", spec.name, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--n_ctx", str(spec.context)]
        if spec.threads:
            cmd += ["--n_threads", str(spec.threads), "--n_threads_batch", str(spec.threads)]
        return cmd
    if spec.backend == "llama-server":
        cmd = [llama_server_binary() or "llama-server", "--model", spec.model_path]
        cmd += ["--alias", spec.name, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--ctx-size", str(spec.context * spec.slots), "--parallel", str(spec.slots)]
        cmd += ["--no-webui"]
        if spec.threads:
            cmd += ["--threads", str(spec.threads), "--threads-batch", str(spec.threads)]
        return cmd
    if spec.backend == "transformers":
        exe = shutil.which("transformers", path=_bin_path()) or "transformers"
        cmd = [exe, "serve", spec.model_path, "--host", "127.0.0.1", "--port", str(port)]
        return cmd + ["--device", "cpu", "--dtype", "float32", "--continuous-batching"]
    raise LLMServerError(
        f"unknown LLM server backend {spec.backend!r}; choose one of {', '.join(BACKENDS)}"
    )


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies, so a killed run
    (SIGKILL, SIGTERM: no `with` cleanup) leaves no server behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def log_dir() -> Path:
    """Where server logs go (kept after a failure, to read)."""
    from mapslib.foundation.io import cache_root

    return cache_root() / "llm-server"


class LocalServer:
    """A running local server: `with LocalServer(spec) as server: ... server.base_url ...`."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir() / f"{spec.backend}.log"

    @property
    def request_model(self) -> str:
        """The model name requests must carry: transformers serve pins its model by path."""
        return self.spec.model_path if self.spec.backend == "transformers" else self.spec.name

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it answers; stop it again if it does not."""
        require_backend(self.spec.backend)
        if not Path(self.spec.model_path).exists():
            raise LLMServerError(
                f"the local LLM's model file or folder does not exist: {self.spec.model_path}"
            )
        self.port = self.spec.port or free_port()
        if self.spec.port and port_taken(self.port):
            raise LLMServerError(
                f"port {self.port} is already in use on localhost; pass another --llm-port, or none "
                "to let the project pick a free one"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                server_command(self.spec, self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | {"PATH": _bin_path()},
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Whether the server answers its health route now (transformers' lists no models offline)."""
        route = "/v1/models" if self.spec.backend == "llama-cpp" else "/health"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{route}", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def failure(self) -> str | None:
        """None while the server runs; else one line on its death and how to resume."""
        if self.alive():
            return None
        return (
            self.death_message("stopped during the run")
            + "; the answers received so far are cached: rerun the same command to ask for the rest"
        )

    def wait_healthy(self) -> None:
        """Poll until the server answers; a clear error if it exits or the wait runs out."""
        deadline = time.monotonic() + self.spec.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LLMServerError(self.death_message("exited before it was ready"))
            if self.healthy():
                return
            time.sleep(0.5)
        raise LLMServerError(
            f"the {self.spec.backend} LLM server did not answer within {self.spec.startup_timeout:.0f} s "
            f"(log: {self.log_path}); raise startup_timeout for a large model or a slow disk"
        )

    def death_message(self, what: str) -> str:
        """One line: the server stopped, its exit code, its last log line, and where the log is."""
        code = self.process.poll() if self.process is not None else None
        hint = SIGILL_HINT[self.spec.backend] if code == -signal.SIGILL else ""
        return (
            f"the {self.spec.backend} LLM server {what} (exit code {code}){hint}; last log line: "
            f"{self.last_log_line()!r}; full log: {self.log_path}"
        )

    def last_log_line(self) -> str:
        """The last non-empty line the server wrote (its own reason for stopping, usually)."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the server, and kill it if it does not exit within `grace` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def local_spec(
    model: str | None = None,
    backend: str = "llama-cpp",
    *,
    port: int | None = None,
    threads: int | None = None,
    slots: int = 1,
) -> ServerSpec:
    """What `--llm local` serves: an alias or .gguf file (llama-cpp, llama-server), or a model folder
    (transformers).

    The request name is the file or folder name and the backend, never a local path, so answer
    caches (the committed ones included) match on every machine.
    """
    from mapslib.foundation.packaged import ALIASES

    if backend not in BACKENDS:
        raise LLMServerError(
            f"unknown LLM server backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    model = model or DEFAULT_LOCAL_MODEL
    if model in ALIASES:
        path = ALIASES[model].path()
    else:
        path = Path(model)
        if not path.exists():
            raise LLMServerError(
                f"local LLM {model!r} is neither a model alias ({', '.join(ALIASES)}) nor an "
                "existing .gguf file or model folder"
            )
    if backend in GGUF_BACKENDS and path.suffix != ".gguf":
        raise LLMServerError(
            f"the {backend} backend serves a .gguf file, not {path}; pass one, or --llm-backend "
            "transformers for a folder"
        )
    if backend == "transformers" and not (path / "config.json").is_file():
        raise LLMServerError(
            f"the transformers backend serves a saved model folder (with config.json), not {path}; "
            "use --llm-backend llama-cpp or llama-server for a .gguf file"
        )
    name = f"{path.name.removesuffix('.gguf')}@{backend}"
    if threads is None and backend in GGUF_BACKENDS:
        threads = os.cpu_count() or 1  # llama-cpp's default, half the cores, is 1.6x slower on 2
    if slots < 1 or (slots > 1 and backend != "llama-server"):
        raise LLMServerError(
            f"{slots} server slots asked of the {backend} backend; only llama-server decodes "
            "several requests together (slots >= 1)"
        )
    return ServerSpec(backend, str(path.resolve()), name, port=port, threads=threads, slots=slots)


def slots_for(backend: str, concurrency: int) -> int:
    """Server slots for `concurrency` requests in flight: one each on llama-server, which decodes
    them together; 1 elsewhere (llama-cpp answers one at a time, transformers batches by itself)."""
    return concurrency if backend == "llama-server" else 1


def server_record(spec: ServerSpec) -> dict[str, object]:
    """The server's settings for a result's sidecar (no paths beyond the model's file name)."""
    return {
        "backend": spec.backend,
        "model": spec.name,
        "context": spec.context,
        "threads": spec.threads,
        "slots": spec.slots,
    }
