"""The control socket of a running VMM: line-delimited JSON requests and replies (docs/control.md)."""
import json
import os
import socket
import socketserver
import stat
import struct
import threading
import time

from .errors import InputError, KvmsnapError

MAX_REQUEST = 64 * 1024


class ControlServer:
    """Serves ``handlers`` on a Unix socket: command name → callable(request, emit) → reply dict, where
    ``emit(dict)`` sends an intermediate ``{"progress": …}`` line before the reply."""

    def __init__(self, path: str, handlers: dict):
        self.path = path
        self.handlers = handlers
        _clear_stale_socket(path)
        # Born 0600 (no window where others can connect) under a temporary name, renamed into place
        # once listening, so a client that sees ``path`` can connect at once.
        staging = f"{path}.{os.getpid()}.tmp"
        old = os.umask(0o177)
        try:
            self._server = _Server(staging, _Handler)
            os.rename(staging, path)
            self._inode = os.lstat(path).st_ino
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
            if os.lstat(self.path).st_ino == self._inode:     # still ours: nobody put another file there
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
        except InputError as e:         # the request's fault: the client exits 2, as for a bad flag
            return {"ok": False, "error": str(e), "input": True}
        except KvmsnapError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:          # report, keep serving
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN     # many clients at once wait their turn, none is refused

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
            except RecursionError:
                reply = {"ok": False, "error": "not JSON this server reads: nested too deeply"}
            else:
                reply = self.server.control.dispatch(request, self._emit)
            try:
                self._send(reply)
            except OSError:
                return                  # the client left before its reply: nothing to tell anyone

    def _send(self, message: dict) -> None:
        self.wfile.write(json.dumps(message).encode() + b"\n")
        self.wfile.flush()

    def _emit(self, progress: dict) -> None:
        try:
            self._send({"progress": progress})
        except OSError:
            pass                        # the client went away; the command itself carries on


def _clear_stale_socket(path: str) -> None:
    """Make room for the socket at ``path``: nothing there, or a socket of this user's that nobody
    listens on any more (a VMM that was killed), which is removed. Anything else is refused: a
    file, a fifo, a device, a directory, a symbolic link or another user's socket is never
    replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise InputError(f"{path}: cannot use it for the control socket: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise InputError(f"{path}: exists and is not a socket; refusing to replace it (remove it, or name "
                         "another path)")
    if st.st_uid != os.getuid():
        raise InputError(f"{path}: a socket of another user; refusing to replace it")
    if _is_live_socket(path):
        raise InputError(f"{path}: a control socket is already in use there")
    os.unlink(path)


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """Connect, waiting while the VMM's listen queue is full (a Unix socket refuses with EAGAIN)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sock.connect(path)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


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
            _connect(self._sock, socket_path, timeout)
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
            raise (InputError if reply.get("input") else KvmsnapError)(f"{cmd}: {reply.get('error', 'failed')}")
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
