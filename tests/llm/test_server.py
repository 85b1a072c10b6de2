"""The local LLM server: started, used and stopped for real, and every way it can fail.

`transformers serve` (pure Python, in requirements.txt) serves a tiny random Llama saved to a temp
folder with SmolLM2's real tokenizer and chat template: the client asks a real server. Its answers
are noise, so they end as recorded failures, which is itself a path to test. (Describing heads with
the llama.cpp servers is tested in tests/salient/test_describe.py.)
"""

from __future__ import annotations

import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fake_llm import parse_json
from transformers import LlamaConfig, LlamaForCausalLM

from mapslib.errors import MapsError
from mapslib.foundation.packaged import ALIASES
from mapslib.llm import server as llm_server
from mapslib.llm.client import Endpoint, LLMClient, LLMConfig
from mapslib.llm.server import (
    LLMServerError,
    LocalServer,
    ServerSpec,
    backend_installed,
    local_spec,
    require_backend,
)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, smollm2) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (and chat template), saved as a folder."""
    folder = tmp_path_factory.mktemp("tiny-llm")
    config = LlamaConfig(
        vocab_size=len(smollm2.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def logs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_server, "log_dir", lambda: tmp_path / "logs")


def test_unknown_backend_and_missing_model_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(LLMServerError, match="choose one of llama-cpp, llama-server, transformers"):
        local_spec("smollm2-135m", "vllm")
    with pytest.raises(LLMServerError, match="neither a model alias"):
        local_spec(str(tmp_path / "nothing.gguf"))
    with pytest.raises(LLMServerError, match="serves a saved model folder"):
        local_spec(str(ALIASES["smollm2-135m"].path()), "transformers")
    for backend in ("llama-cpp", "llama-server"):
        with pytest.raises(LLMServerError, match=f"the {backend} backend serves a .gguf file"):
            local_spec(str(tmp_path), backend)


def test_request_name_is_the_file_name_and_backend_never_a_path() -> None:
    spec = local_spec("smollm2-135m", "llama-cpp")
    assert spec.name == "SmolLM2-135M-Instruct.Q4_1@llama-cpp"
    assert "/" not in spec.name and Path(spec.model_path).is_file()


@pytest.mark.parametrize("backend", ["llama-cpp", "llama-server"])
def test_llama_cpp_servers_generate_on_every_core_unless_told(backend: str) -> None:
    """llama-cpp's default (half the cores) answered 1.6x slower on this 2-core machine."""
    assert local_spec("smollm2-135m", backend).threads == os.cpu_count()
    assert local_spec("smollm2-135m", backend, threads=1).threads == 1


def test_llama_server_serves_the_gguf_under_its_name_with_a_slot_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The binary comes from $MAPSLIB_LLAMA_SERVER; requests and cache keys carry the file name and
    backend; each slot (a request decoded alongside the others) gets the whole context."""
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("MAPSLIB_LLAMA_SERVER", str(binary))
    spec = local_spec("smollm2-135m", "llama-server", threads=3)
    assert spec.name == "SmolLM2-135M-Instruct.Q4_1@llama-server"
    cmd = llm_server.server_command(spec, 8123)
    assert cmd[:3] == [str(binary), "--model", spec.model_path]
    value = {
        flag: cmd[cmd.index(flag) + 1] for flag in ("--alias", "--port", "--host", "--threads")
    }
    assert value == {
        "--alias": spec.name,
        "--port": "8123",
        "--host": "127.0.0.1",
        "--threads": "3",
    }
    assert cmd[cmd.index("--parallel") + 1] == "1"
    assert LocalServer(spec).request_model == spec.name
    four = llm_server.server_command(local_spec("smollm2-135m", "llama-server", slots=4), 8123)
    assert four[four.index("--parallel") + 1] == "4"
    assert four[four.index("--ctx-size") + 1] == str(4 * spec.context)


@pytest.mark.parametrize(("backend", "slots"), [("llama-cpp", 2), ("llama-server", 0)])
def test_slots_only_where_the_server_has_them(backend: str, slots: int) -> None:
    with pytest.raises(LLMServerError, match="only llama-server decodes several requests"):
        local_spec("smollm2-135m", backend, slots=slots)


def test_llama_server_not_built_names_the_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAPSLIB_LLAMA_SERVER", str(tmp_path / "missing"))
    assert not backend_installed("llama-server")
    with pytest.raises(LLMServerError, match="make setup-llm-server"):
        require_backend("llama-server")


def test_backend_not_installed_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_server, "_has", lambda *modules: False)
    with pytest.raises(LLMServerError, match=r'pip install "llama-cpp-python\[server\]"'):
        require_backend("llama-cpp")
    with pytest.raises(LLMServerError, match=r"transformers\[serving\]"):
        require_backend("transformers")


def test_a_taken_port_is_refused_before_starting(tiny_folder: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = LocalServer(ServerSpec("transformers", str(tiny_folder), "tiny", port=port))
        with pytest.raises(LLMServerError, match=f"port {port} is already in use"):
            server.start()
        assert server.process is None


def test_a_server_that_exits_at_start_reports_its_last_log_line(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "import sys; print('error: cannot load the model file'); sys.exit(3)"
    monkeypatch.setattr(
        llm_server, "server_command", lambda spec, port: [sys.executable, "-c", script]
    )
    server = LocalServer(ServerSpec("transformers", str(tiny_folder), "tiny"))
    with pytest.raises(LLMServerError) as err:
        server.start()
    message = str(err.value)
    assert "exited before it was ready (exit code 3)" in message
    assert "cannot load the model file" in message and "\n" not in message
    assert isinstance(err.value, MapsError)  # the CLI prints it as one line, exit status 2


@pytest.mark.parametrize("backend", ["llama-cpp", "llama-server"])
def test_a_server_killed_by_an_illegal_instruction_says_to_rebuild_it(
    backend: str, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a llama.cpp built by GCC 12 does on a CPU with AMX (tools/gcc12_amx_tilecfg.h)
    script = "import os, signal; print('warming up the model'); os.kill(os.getpid(), signal.SIGILL)"
    monkeypatch.setattr(
        llm_server, "server_command", lambda spec, port: [sys.executable, "-c", script]
    )
    monkeypatch.setattr(llm_server, "require_backend", lambda backend: None)
    server = LocalServer(ServerSpec(backend, str(tiny_folder), "tiny"))
    with pytest.raises(LLMServerError) as err:
        server.start()
    message = str(err.value)
    assert "illegal instruction" in message and "\n" not in message
    assert f"make {'setup-llm' if backend == 'llama-cpp' else 'setup-llm-server'}" in message
    assert "warming up the model" in message  # the last log line is still there


def test_a_server_that_never_answers_times_out_and_is_stopped(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        llm_server,
        "server_command",
        lambda spec, port: [sys.executable, "-c", "import time; time.sleep(60)"],
    )
    server = LocalServer(ServerSpec("transformers", str(tiny_folder), "tiny", startup_timeout=1.0))
    with pytest.raises(LLMServerError, match="did not answer within 1 s"):
        server.start()
    assert server.process is not None and server.process.poll() is not None  # stopped, not leaked


needs_transformers = pytest.mark.skipif(
    not backend_installed("transformers"), reason="transformers[serving] is not installed"
)


def client_for(server: LocalServer, config: LLMConfig, cache: Path) -> LLMClient:
    """A client of the started server, stopped at once should the server die."""
    endpoint = Endpoint(server.base_url, model=server.request_model)
    return LLMClient(config, cache=cache, endpoint=endpoint, health=server.failure)


@needs_transformers
def test_real_transformers_server_answers_concurrent_requests(
    tiny_folder: Path, tmp_path: Path
) -> None:
    """Start, answer concurrent requests, report noise as failures (nothing cached), stop."""
    spec = replace(local_spec(str(tiny_folder), "transformers"), startup_timeout=180)
    config = LLMConfig(model=spec.name, max_tokens=8, max_attempts=2, backoff=0.01, timeout=120)
    questions = [
        [{"role": "user", "content": f"Name a {w} as JSON."}] for w in ("city", "dog", "sea")
    ]
    with LocalServer(spec) as server:
        assert server.healthy()
        client = client_for(server, config, tmp_path / "answers")
        with ThreadPoolExecutor(max_workers=len(questions)) as pool:
            answers = list(pool.map(lambda m: client.ask(m, parse_json), questions))
        process = server.process
    assert process is not None and process.poll() is not None  # stopped at the end of the block
    # a random model writes noise: 8 tokens cannot hold a JSON object, so every request fails
    assert all(record is None and error for record, error in answers)
    assert client.requests >= 2 * len(questions)
    assert not list((tmp_path / "answers").rglob("*.json"))


@needs_transformers
def test_a_server_dying_mid_run_stops_the_run_with_a_resume_hint(
    tiny_folder: Path, tmp_path: Path
) -> None:
    spec = replace(local_spec(str(tiny_folder), "transformers"), startup_timeout=180)
    config = LLMConfig(model=spec.name, max_tokens=8, max_attempts=3, backoff=0.01, timeout=60)
    with LocalServer(spec) as server:
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        client = client_for(server, config, tmp_path)
        with pytest.raises(LLMServerError, match="stopped during the run.*rerun the same command"):
            client.ask([{"role": "user", "content": "Hello."}], parse_json)
    assert client.requests == 1


def test_an_error_inside_the_block_stops_the_server(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) or any error leaves no server behind."""
    script = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    monkeypatch.setattr(
        llm_server, "server_command", lambda spec, port: [sys.executable, "-c", script, str(port)]
    )
    server = LocalServer(ServerSpec("transformers", str(tiny_folder), "tiny"))
    with pytest.raises(KeyboardInterrupt), server:
        assert server.alive() and server.healthy()
        raise KeyboardInterrupt
    assert not server.alive()


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux only")
def test_a_killed_run_leaves_no_server_behind(tiny_folder: Path, tmp_path: Path) -> None:
    """A run killed with SIGKILL cannot clean up; the server dies with it all the same."""
    import os
    import signal
    import subprocess
    import time

    code = (
        "import sys, time\n"
        "from mapslib.llm import server as llm_server\n"
        "from mapslib.llm.server import LocalServer, ServerSpec\n"
        "llm_server.server_command = lambda spec, port: [sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1']\n"
        "llm_server.LocalServer.healthy = lambda self: True\n"
        f"llm_server.log_dir = lambda: __import__('pathlib').Path({str(tmp_path)!r})\n"
        f"s = LocalServer(ServerSpec('transformers', {str(tiny_folder)!r}, 'tiny'))\n"
        "s.start(); print(s.process.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the server outlived its killed parent")
