"""A tiny HTTP service shipped inside the demo payloads (stdlib only).

GET /health answers 200 once started (or 500 with --fail-health); GET /
answers JSON with the service, version and node.  --start-delay and
--stop-delay make start and stop take fixed, known times; --response-delay MIN MAX makes each
GET / answer after a random delay in that range (the zero-downtime benchmark's 20-50 ms).

--fault-file PATH is a switch for fault injection (the chaos suite): while
that file holds ``malformed``, /health answers bytes that are not HTTP and
closes; ``hang``, it answers nothing until the word changes (at most 120 s);
``flap``, it answers 500 and 200 by turns.  A missing, empty or unknown
file changes nothing, and GET / is never affected.
"""

import argparse
import json
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: how long a /health request hangs at most while the fault file says ``hang``
HANG_LIMIT = 120.0


def health_fault(path: str) -> str:
    """The fault the switch file asks for now ('' for none)."""
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--node", default="")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--stop-delay", type=float, default=0.0)
    parser.add_argument("--response-delay", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--fail-health", action="store_true")
    parser.add_argument("--fail-health-on", action="append", default=[], metavar="NODE",
                        help="answer 500 on /health only on this node (repeatable)")
    parser.add_argument("--fault-file", default="",
                        help="a file whose word (malformed, hang, flap) breaks /health while it is there")
    args = parser.parse_args()
    args.fail_health = args.fail_health or args.node in args.fail_health_on
    body = json.dumps({"service": args.service, "version": args.version, "node": args.node}).encode()

    flaps = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fault = health_fault(args.fault_file) if self.path == "/health" else ""
            if fault == "malformed":
                self.wfile.write(b"SSH-2.0-not-http\r\n\r\n")
                self.close_connection = True
                return
            if fault == "hang":
                deadline = time.monotonic() + HANG_LIMIT
                while health_fault(args.fault_file) == "hang" and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.close_connection = True
                return
            if self.path == "/health":
                flaps[0] += 1
                failing = args.fail_health or (fault == "flap" and flaps[0] % 2 == 1)
                code, data = (500, b"unhealthy\n") if failing else (200, b"ok\n")
            else:
                if args.response_delay[1] > 0:
                    time.sleep(random.uniform(*args.response_delay))
                code, data = 200, body
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    time.sleep(args.start_delay)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def on_term(*_: object) -> None:
        # stop answering at once, then take --stop-delay to shut down
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    time.sleep(args.stop_delay)
    sys.exit(0)


if __name__ == "__main__":
    main()
