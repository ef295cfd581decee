"""Virga python3-http runtime: a small threaded HTTP/1.1 server (standard library only)
that hands each request to function/handler.py's handle(event, context).

Listens on 127.0.0.1 and the port of $upstream_url (default 5000). Set write_debug=true
(or VIRGA_LOG_REQUESTS=1) to log one line per request on stderr. With VIRGA_POOL=1 it is a
generic runtime of a warm pool: libraries imported, function loaded later by one bind call.
With VIRGA_ZYGOTE=PATH it is a pre-forked interpreter that forks runtimes on request.
"""

import json
import os
import socket
import socketserver
import sys
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

# http.server is not used: with http.client, email and ssl behind it, it doubles the
# runtime's start (about 40 ms against 22 ms here), and a runtime only ever talks to its
# watchdog. traceback is imported where an error is reported.

ROOT = os.path.dirname(os.path.abspath(__file__))
# In a warm pool (VIRGA_POOL=1) the runtime starts before it knows its function: it serves
# nothing until the platform POSTs /_/virga/bind once with the code's directory and env,
# carrying this runtime's bind token (VIRGA_BIND_TOKEN, known only to the platform).
POOLED = os.getenv("VIRGA_POOL", "") == "1"
handler = None
bind_token = b""
if POOLED:
    # Only a pooled runtime checks a bind; it is started ahead of need, so this costs no call.
    import hashlib
    import hmac


def load_function(root):
    """Import root/function/handler.py with the bundle's dependencies on sys.path."""
    global handler
    # The bundle root (so `function` is importable), the handler's own directory (so it can
    # import its sibling modules), then the dependencies `virga build` installed into python/.
    for extra in (os.path.join(root, "python"), os.path.join(root, "function"), root):
        if os.path.isdir(extra) and extra not in sys.path:
            sys.path.insert(0, extra)
    from function import handler as loaded  # noqa: E402

    handler = loaded


if not POOLED:
    load_function(ROOT)

REASONS = {status.value: status.phrase for status in HTTPStatus}
MAX_LINE = 65536
MAX_HEADERS = 100
LOG_REQUESTS = os.getenv("write_debug", "").lower() in ("1", "true", "yes") or os.getenv(
    "VIRGA_LOG_REQUESTS", ""
).lower() in ("1", "true", "yes")


class Event:
    """What the handler receives about the request."""

    __slots__ = ("body", "headers", "method", "query", "path")

    def __init__(self, body, headers, method, query, path):
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path


class Context:
    """Information about where the function runs: `hostname` is the instance's name (its
    $HOSTNAME, as a pod's in OpenFaaS)."""

    __slots__ = ("hostname",)

    def __init__(self):
        self.hostname = os.getenv("HOSTNAME") or socket.gethostname()


class MissingParameter(KeyError):
    """event.query[name] of a parameter the request does not have: a 400, as in Flask."""


class Query(dict):
    """The query parameters: a dict of each name's first value, with the `getlist` and typed
    `get` of Flask's request.args (a werkzeug MultiDict)."""

    __slots__ = ("_lists",)

    def __init__(self, lists):
        super().__init__((k, v[0]) for k, v in lists.items())
        self._lists = lists

    def __missing__(self, key):
        raise MissingParameter(key)

    def get(self, key, default=None, type=None):
        if key not in self:
            return default
        value = dict.__getitem__(self, key)
        if type is None:
            return value
        try:
            return type(value)
        except (ValueError, TypeError):
            return default

    def getlist(self, key, type=None):
        values = self._lists.get(key, [])
        if type is None:
            return list(values)
        out = []
        for value in values:
            try:
                out.append(type(value))
            except (ValueError, TypeError):
                pass
        return out


def encode_body(body, headers):
    """Turn a handler body into bytes, setting a JSON content type for dicts and lists."""
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (dict, list)):
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(body).encode("utf-8")
    return str(body).encode("utf-8")


def format_result(result):
    """Map what handle() returned to (status, headers, body bytes)."""
    headers = {}
    status = 200
    if result is None:
        return status, headers, b""
    if isinstance(result, dict):
        status = int(result.get("statusCode", 200) or 200)
        headers.update(result.get("headers") or {})
        return status, headers, encode_body(result.get("body"), headers)
    if isinstance(result, tuple) and 2 <= len(result) <= 3:
        body, status = result[0], int(result[1])
        if len(result) == 3 and result[2]:
            headers.update(result[2])
        return status, headers, encode_body(body, headers)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return status, headers, bytes(result)
    return status, headers, str(result).encode("utf-8")


class Headers:
    """Request headers: case-insensitive lookups, repeated names kept, in arrival order
    (the parts of email.message.Message and of a dict that handlers use)."""

    __slots__ = ("_items",)

    def __init__(self, items):
        self._items = items

    def get(self, name, default=None):
        name = name.lower()
        for key, value in self._items:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name, default=None):
        name = name.lower()
        found = [value for key, value in self._items if key.lower() == name]
        return found or default

    def __getitem__(self, name):
        return self.get(name)

    def __contains__(self, name):
        return self.get(name) is not None

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self._items)

    def keys(self):
        return [key for key, _ in self._items]

    def values(self):
        return [value for _, value in self._items]

    def items(self):
        return list(self._items)

    def __repr__(self):
        return "Headers(%r)" % (self._items,)


class BadRequest(Exception):
    """The request could not be parsed; the connection is answered 400 and closed."""


class Handler(socketserver.StreamRequestHandler):
    """Serves one keep-alive connection: reads each request, calls the function, writes the
    whole response in one write."""

    disable_nagle_algorithm = True

    def handle(self):
        while self.serve_one():
            pass

    def serve_one(self):
        """Serve one request; whether the connection stays open for another."""
        line = self.rfile.readline(MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        self.command, self.close_connection = "", True
        try:
            method, target, version = self.parse_request_line(line)
            self.command = method
            headers = self.read_headers()
            connection = (headers.get("Connection") or "").lower()
            self.close_connection = (
                "close" in connection
                if version == "HTTP/1.1"
                else "keep-alive" not in connection
            )
            if version == "HTTP/1.1" and (headers.get("Expect") or "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = self.read_body(headers)
        except (BadRequest, ValueError, OSError) as e:
            self.close_connection = True
            self.respond(400, {"Content-Type": "text/plain"}, ("bad request: %s\n" % e).encode())
            return False
        self.dispatch(method, target, headers, body)
        return not self.close_connection

    @staticmethod
    def parse_request_line(line):
        if len(line) > MAX_LINE:
            raise BadRequest("request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest("malformed request line")
        return parts

    def read_headers(self):
        items = []
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise BadRequest("header line too long")
            if line in (b"\r\n", b"\n", b""):
                return Headers(items)
            if len(items) >= MAX_HEADERS:
                raise BadRequest("too many headers")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name.strip():
                raise BadRequest("malformed header line")
            items.append((name.strip(), value.strip()))

    def read_body(self, headers):
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(MAX_LINE + 1)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(MAX_LINE + 1)
        length = int(headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self, method, target, headers, body):
        parts = urlsplit(target)
        if handler is None:
            self.bind(parts.path, headers, body)
            return
        query = Query(parse_qs(parts.query, keep_blank_values=True))
        event = Event(body, headers, method, query, parts.path)
        try:
            status, out_headers, payload = format_result(handler.handle(event, Context()))
        except MissingParameter as e:
            status, out_headers = 400, {"Content-Type": "text/plain; charset=utf-8"}
            payload = ("Bad Request: the query has no parameter %s\n" % e).encode()
        except Exception as e:  # the handler's error is the response; keep serving
            import traceback

            traceback.print_exc(file=sys.stderr)
            status, out_headers, payload = 500, {"Content-Type": "text/plain"}, str(e).encode()
        self.respond(status, out_headers, payload)
        if LOG_REQUESTS:
            sys.stderr.write("%s %s %d %d\n" % (method, target, status, len(payload)))

    def bind(self, path, headers, body):
        """Pooled and not bound yet: the only request served is the platform's bind, which
        must carry this runtime's token; the answer proves the runtime knew it."""
        global bind_token
        if path != "/_/virga/bind" or self.command != "POST":
            self.respond(503, {"Content-Type": "text/plain"}, b"runtime not bound to a function\n")
            return
        given = (headers.get("X-Virga-Bind-Token") or "").encode("latin-1")
        if not bind_token or not hmac.compare_digest(given, bind_token):
            self.respond(403, {"Content-Type": "text/plain"}, b"bind refused\n")
            return
        try:
            spec = json.loads(body)
            os.environ.update({str(k): str(v) for k, v in spec.get("env", {}).items()})
            os.chdir(spec["dir"])
            load_function(spec["dir"])
        except Exception as e:  # report why the bind failed; the platform discards us
            import traceback

            traceback.print_exc(file=sys.stderr)
            self.respond(500, {"Content-Type": "text/plain"}, ("bind failed: %s\n" % e).encode())
            return
        proof = hashlib.sha256(b"virga-bound:" + bind_token).hexdigest()
        bind_token = b""
        self.respond(200, {"Content-Type": "text/plain", "X-Virga-Bound": proof}, b"bound\n")

    def respond(self, status, headers, payload):
        reason = REASONS.get(status, "")
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        for key, value in headers.items():
            if key.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            lines.append("%s: %s" % (key, value))
        if not any(k.lower() == "content-type" for k in headers) and payload:
            # Flask's default for a body that is not JSON.
            lines.append("Content-Type: text/html; charset=utf-8")
        lines.append("Content-Length: %d" % len(payload))
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + payload)


class Server(socketserver.ThreadingTCPServer):
    """Threaded server with a deeper accept queue for bursts of connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def listen_port():
    """The port of $upstream_url, or 5000."""
    url = os.getenv("upstream_url", "")
    if url:
        if "://" not in url:
            url = "http://" + url
        try:
            port = urlsplit(url).port
        except ValueError:
            port = None
        if port:
            return port
    return 5000


def main():
    global bind_token
    # Taken out of the environment before any function code can run in this process.
    bind_token = os.environ.pop("VIRGA_BIND_TOKEN", "").encode("latin-1")
    port = listen_port()
    server = Server(("127.0.0.1", port), Handler)
    if LOG_REQUESTS:
        sys.stderr.write("python3-http listening on 127.0.0.1:%d\n" % port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def zygote(path):
    """Pre-forked interpreter: with everything above imported, fork one runtime per request
    on the unix socket at `path`. A request is one line of JSON ({"dir", "env"}) carrying the
    client's stdout and stderr; the child serves the function on the port of its
    $upstream_url. The client's connection lives as long as the child: when the client goes,
    the child is killed; when the child exits, its exit code is sent and the connection closed.
    """
    import ctypes
    import signal
    import threading
    import traceback

    libc = ctypes.CDLL(None, use_errno=True)
    me = os.getpid()
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    print("virga-zygote ready", flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
            while not data.endswith(b"\n"):
                more = conn.recv(1 << 16)
                if not more:
                    raise ValueError("request cut short")
                data += more
            spec = json.loads(data)
            if len(fds) != 2:
                raise ValueError("expected stdout and stderr descriptors")
        except (OSError, ValueError) as e:
            sys.stderr.write("zygote: bad request: %s\n" % e)
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            try:
                # Die with the zygote (PR_SET_PDEATHSIG), as a spawned runtime dies with its
                # watchdog; the zygote itself dies with the platform.
                libc.prctl(1, signal.SIGKILL)
                if os.getppid() != me:
                    os._exit(1)
                os.setsid()
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                os.closerange(3, 65536)
                os.environ.clear()
                os.environ.update(spec["env"])
                os.chdir(spec["dir"])
                if spec["env"].get("VIRGA_POOL") != "1":
                    load_function(spec["dir"])
                main()
            except BaseException:
                traceback.print_exc(file=sys.stderr)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        threading.Thread(target=watch, args=(conn, pid, signal.SIGKILL), daemon=True).start()


def watch(conn, pid, kill):
    """Tie a forked runtime's life to its client's connection (see zygote)."""
    import threading

    def reap():
        _, status = os.waitpid(pid, 0)
        try:
            conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    threading.Thread(target=reap, daemon=True).start()
    try:
        while conn.recv(1 << 10):
            pass
    except OSError:
        pass
    try:
        os.killpg(pid, kill)
    except OSError:
        pass
    conn.close()


if __name__ == "__main__":
    if os.getenv("VIRGA_ZYGOTE"):
        zygote(os.environ["VIRGA_ZYGOTE"])
    else:
        main()
