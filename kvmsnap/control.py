"""The control socket of a running VMM: line-delimited JSON requests and replies (docs/control.md)."""
import json
import os
import socket
import socketserver
import struct
import threading

from .errors import InputError, KvmsnapError

MAX_REQUEST = 64 * 1024


class ControlServer:
    """Serves ``handlers`` on a Unix socket: command name → callable(request, emit) → reply dict, where
    ``emit(dict)`` sends an intermediate ``{"progress": …}`` line before the reply."""

    def __init__(self, path: str, handlers: dict):
        self.path = path
        self.handlers = handlers
        if os.path.exists(path):
            if _is_live_socket(path):
                raise InputError(f"{path}: a control socket is already in use there")
            os.unlink(path)
        # Born 0600 (no window where others can connect) under a temporary name, renamed into place
        # once listening, so a client that sees ``path`` can connect at once.
        staging = f"{path}.{os.getpid()}.tmp"
        old = os.umask(0o177)
        try:
            self._server = _Server(staging, _Handler)
            os.rename(staging, path)
        except OSError as e:
            if os.path.exists(staging):
                os.unlink(staging)
            raise InputError(f"{path}: cannot create control socket: {e.strerror}") from None
        finally:
            os.umask(old)
        self._server.control = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()     # waits for serve_forever, so only when it runs
        self._server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def dispatch(self, request, emit=lambda progress: None) -> dict:
        """One request to one reply; never raises."""
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with a "cmd" string'}
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {request['cmd']!r}; "
                                          f"known: {', '.join(sorted(self.handlers))}"}
        try:
            return {"ok": True, **handler(request, emit)}
        except KvmsnapError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:          # report, keep serving
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def verify_request(self, request, client_address) -> bool:
        """Only the user running the VMM may drive it (SO_PEERCRED)."""
        creds = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid == os.getuid()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST:     # the rest of it would read as another request: hang up
                self._send({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                return
            try:
                request = json.loads(line)
            except ValueError as e:
                reply = {"ok": False, "error": f"not JSON: {e}"}
            else:
                reply = self.server.control.dispatch(request, self._emit)
            self._send(reply)

    def _send(self, message: dict) -> None:
        self.wfile.write(json.dumps(message).encode() + b"\n")
        self.wfile.flush()

    def _emit(self, progress: dict) -> None:
        try:
            self._send({"progress": progress})
        except OSError:
            pass                        # the client went away; the command itself carries on


def _is_live_socket(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
        return True
    except OSError:
        return False


class ControlClient:
    """A connection to a VMM's control socket carrying any number of requests in turn."""

    def __init__(self, socket_path: str, timeout: float = 600.0):
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(socket_path)
        except FileNotFoundError:
            self._sock.close()
            raise InputError(f"{socket_path}: no control socket there (is `kvmsnap run --control {socket_path}` "
                             "running?)") from None
        except OSError as e:
            self._sock.close()
            raise KvmsnapError(f"{socket_path}: {e.strerror or e}") from None
        self._replies = self._sock.makefile("rb")

    def request(self, cmd: str, on_progress=None, **args) -> dict:
        """Send one command; returns the reply, raising ``KvmsnapError`` if it failed.
        ``on_progress(dict)`` receives the intermediate progress lines."""
        try:
            self._sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            while True:
                data = self._replies.readline(16 * 1024 * 1024)
                if not data.startswith(b'{"progress"'):
                    break
                if on_progress:
                    on_progress(json.loads(data)["progress"])
        except OSError as e:
            raise KvmsnapError(f"{self.socket_path}: {e.strerror or e}") from None
        if not data:
            raise KvmsnapError(f"{self.socket_path}: the VMM closed the connection without a reply "
                               "(not our user's socket, or the VMM ended)")
        reply = json.loads(data)
        if not reply.get("ok"):
            raise KvmsnapError(f"{cmd}: {reply.get('error', 'failed')}")
        return reply

    def close(self) -> None:
        self._replies.close()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(socket_path: str, cmd: str, timeout: float = 600.0, on_progress=None, **args) -> dict:
    """One command over a fresh connection (see ``ControlClient.request``)."""
    with ControlClient(socket_path, timeout) as client:
        return client.request(cmd, on_progress=on_progress, **args)
