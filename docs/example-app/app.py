"""A guestbook: GET / lists the entries, POST / with a body adds one.

An example of what Kraken runs: it reads its port from $PORT, writes only to /tmp (the
container runs as an unprivileged user), logs to stdout (shown by `kraken app logs ID`).
"""
import html
import http.server
import os

PORT = int(os.environ.get("PORT", "8000"))
entries = []


class Guestbook(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        items = "".join(f"<li>{html.escape(e)}</li>" for e in entries)
        body = f"<h1>Guestbook</h1><ul>{items}</ul>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = min(int(self.headers.get("Content-Length", "0")), 4096)
        entries.append(self.rfile.read(length).decode("utf-8", "replace"))
        print(f"new entry ({len(entries)} in all)", flush=True)
        self.send_response(303)
        self.send_header("Location", "/")
        self.end_headers()


print(f"guestbook on port {PORT}", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Guestbook).serve_forever()
