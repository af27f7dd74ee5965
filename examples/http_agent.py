#!/usr/bin/env python3
"""Example agent for the `http` target (docs/agent-protocol.md), standard library only.

    python3 examples/http_agent.py --port 8787

qt POSTs one event document (JSON) per message. The message's payload (`context.payload`)
picks the answer, so examples/http-agent.yaml reaches every outcome:

    "fail": "once"    503 with Retry-After: 1 the first time this idempotency key is seen
                      (retryable: qt waits a second and calls again), then 200
    "fail": "always"  422 (permanent: dead-lettered without retries)
    otherwise         200 {"run_id": "...", "llm_calls": 0, "output": {"handled": EVENT_NAME}}

`--port 0` picks a free port. The first line on stdout is `listening on http://HOST:PORT`;
each request logs one line to stderr.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Idempotency keys that have already failed once, kept for the life of the server.
failed_once = set()
failed_once_lock = threading.Lock()


LOG_LOCK = threading.Lock()


def log(line):
    # One write per line under a lock: requests are answered on several threads, and print()
    # writes the line and its newline separately, so two lines could interleave.
    with LOG_LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as qt's client pool expects
    server_version = "qt-example-agent/1"

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        key = self.headers.get("idempotency-key", "")
        attempt = self.headers.get("x-qt-attempt", "?")
        try:
            event = json.loads(body)
            context = event["context"]
            message_id = context["message_id"]
            payload = context.get("payload")
        except (ValueError, KeyError, TypeError) as e:
            self.answer(400, {"error": f"not an agent event: {e}"}, "-", key, attempt)
            return
        fail = payload.get("fail") if isinstance(payload, dict) else None
        if fail == "always":
            self.answer(422, {"error": "this order cannot be handled"}, message_id, key, attempt)
            return
        if fail == "once":
            with failed_once_lock:
                first = key not in failed_once
                failed_once.add(key)
            if first:
                self.answer(
                    503,
                    {"error": "busy, try again"},
                    message_id,
                    key,
                    attempt,
                    {"Retry-After": "1"},
                )
                return
        run = {
            "run_id": f"run-{message_id}-{attempt}",
            "llm_calls": 0,
            "output": {"handled": event.get("event_name")},
        }
        self.answer(200, run, message_id, key, attempt)

    def answer(self, status, document, message_id, key, attempt, headers=None):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        log(f"{self.command} {self.path} message={message_id} key={key} attempt={attempt} -> {status}")

    def log_message(self, format, *args):
        # One line per request is written by answer(); silence the default access log.
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    log(f"agent listening on http://{host}:{port}/events (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
