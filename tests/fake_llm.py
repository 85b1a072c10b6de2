"""A scripted chat-completions server in a thread, for the LLM client's tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "test-key-SECRET-0123456789"
LINES = ["␣John -> ␣John, John, ␣J", "␣Mary -> ␣Mary, Mary, ␣M", "␣Paris -> ␣Paris, Paris, ␣P"]
GOOD = json.dumps(
    {
        "reasoning": "Every token maps to itself and variants.",
        "inputs": "Names and places with a leading space.",
        "pattern": "Copies the token, also without its space.",
    }
)


class FakeServer:
    """A chat-completions server in a thread; answers from a queue of scripted replies."""

    def __init__(self):
        self.script: list[dict] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = server.script.pop(0) if server.script else {"content": GOOD}
                if reply.get("sleep"):
                    time.sleep(reply["sleep"])
                if "status" in reply:
                    payload = json.dumps({"error": {"message": reply.get("message", "err")}})
                    self.send_response(reply["status"])
                    for k, v in reply.get("headers", {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                if reply.get("reject_json_mode") and "response_format" in body:
                    payload = json.dumps({"error": {"message": "response_format is not supported"}})
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    server.script.insert(
                        0, {k: v for k, v in reply.items() if k != "reject_json_mode"}
                    )
                    return
                payload = json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply["content"]},
                                "finish_reason": reply.get("finish", "stop"),
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_json(text: str | None) -> dict | None:
    """A JSON object, else None (the client asks again)."""
    try:
        obj = json.loads(text or "")
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
