"""Reading what a student's kernel wrote, without trusting it.

A kernel answers a check by writing a ``torch.save`` file. The grader never decodes such a file in
its own process. It:

1. opens it with ``O_NOFOLLOW | O_NONBLOCK`` relative to the io folder's descriptor, requires a
   regular file no larger than a size cap, and reads at most that many bytes (``read_answer``);
2. hands the bytes to a throwaway child, forked for each answer from a small helper process that
   has torch imported (``AnswerDecoder``). The child runs under an address-space and a CPU-time
   limit and a wall-clock timeout. It refuses a zip whose entries are compressed or add up to more
   than the file, decodes with ``torch.load(weights_only=True)``, and rebuilds the value as a tree
   of plain data: tensors (dense, at most ``max_elements`` numbers in all), numbers, strings,
   ``None``, lists, tuples and dicts with str, int or float keys, at most ``max_depth`` deep and
   ``max_nodes`` in all, shared references counted each time they are reached;
3. loads the rebuilt tree, which the child saved again, in the grader.

A hash bomb, a key nested a million deep, a storage that decompresses to gigabytes, a repr bomb, a
FIFO or a link: each ends in the child, or before it, as a ``DecodeError`` with a short message.
"""

from __future__ import annotations

import io
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

MAX_BYTES = 64 << 20
MAX_DEPTH = 32
MAX_NODES = 200_000
MAX_ELEMENTS = 1 << 24
MAX_STRING = 16 << 20


class DecodeError(Exception):
    """An answer file that is not plain data within the limits.

    ``costly``: decoding it ran out of time or memory, or crashed the child (a function that
    answers like this is not asked again).
    """

    def __init__(self, message: str, costly: bool = False):
        super().__init__(message)
        self.costly = costly


def read_answer(dir_fd: int, name: str, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of ``name`` in the folder ``dir_fd``: a regular file, not a link, at most ``max_bytes``."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DecodeError(f"the answer file could not be opened ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError("the answer file is not a regular file")
        if info.st_size > max_bytes:
            raise DecodeError(f"the answer is {info.st_size} bytes, more than the {max_bytes} allowed")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise DecodeError(f"the answer is more than the {max_bytes} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


# --- inside the throwaway child --------------------------------------------------------------------

@dataclass(frozen=True)
class Caps:
    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES
    max_elements: int = MAX_ELEMENTS
    max_string: int = MAX_STRING


def _check_zip(data: bytes, caps: Caps) -> None:
    import zipfile

    if len(data) > caps.max_bytes:
        raise DecodeError(f"the answer is more than the {caps.max_bytes} bytes allowed")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise DecodeError("the answer is not a torch.save file") from None
    if len(entries) > 10_000:
        raise DecodeError("the answer holds too many entries")
    total = 0
    for e in entries:
        if e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size:
            raise DecodeError("the answer holds a compressed entry (torch.save never compresses)")
        total += e.file_size
    if total > len(data):
        raise DecodeError("the answer's entries claim more bytes than the file holds")


def rebuild(value: Any, caps: Caps = Caps()) -> Any:
    """A fresh tree of plain data equal to ``value``, or DecodeError. Iterative: no recursion."""
    import torch

    nodes = 0
    elements = 0
    chars = 0

    def leaf(x: Any) -> Any:
        nonlocal elements, chars
        if x is None or isinstance(x, (bool, float)):
            return x
        if isinstance(x, int):
            if x.bit_length() > 4096:
                raise DecodeError("the answer holds an integer of more than 4096 bits")
            return int(x)
        if isinstance(x, str):
            chars += len(x)
            if chars > caps.max_string:
                raise DecodeError(f"the answer holds more than {caps.max_string} characters of text")
            return str(x)
        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided or x.is_quantized or x.is_meta or x.device.type != "cpu":
                raise DecodeError(f"the answer holds a {x.layout} tensor; return dense CPU tensors")
            n = 1
            for s in x.shape:
                n *= int(s)
            elements += n
            if elements > caps.max_elements:
                raise DecodeError(f"the answer holds more than {caps.max_elements} numbers in tensors")
            if any(st < 0 for st in x.stride()):
                raise DecodeError("the answer holds a tensor with negative strides")
            return x.detach().contiguous().clone()
        if isinstance(x, (torch.dtype, torch.device)):
            return x
        raise DecodeError(f"the answer holds a {type(x).__name__}")

    def container(x: Any) -> bool:
        return isinstance(x, (list, tuple, dict))

    if not container(value):
        return leaf(value)
    # Each frame: (source, target, iterator over items, depth). Targets are filled as we go.
    def new_target(x: Any) -> Any:
        return {} if isinstance(x, dict) else []

    root = new_target(value)
    finished: list[tuple[Any, Any]] = []  # (source, target) pairs whose tuples must be frozen
    stack = [(value, root, iter(value.items() if isinstance(value, dict) else value), 1)]
    nodes = 1
    while stack:
        source, target, items, depth = stack[-1]
        try:
            item = next(items)
        except StopIteration:
            stack.pop()
            finished.append((source, target))
            continue
        nodes += 1
        if nodes > caps.max_nodes:
            raise DecodeError(f"the answer has more than {caps.max_nodes} parts")
        if isinstance(target, dict):
            key, child = item
            if isinstance(key, bool) or not isinstance(key, (str, int, float)):
                raise DecodeError(f"the answer holds a dict key of type {type(key).__name__}; use str, int or float keys")
            key = leaf(key)
        else:
            key, child = None, item
        if container(child):
            if depth + 1 > caps.max_depth:
                raise DecodeError(f"the answer is nested more than {caps.max_depth} deep")
            sub = new_target(child)
            holder = _Slot(child, sub)
            _put(target, key, holder)
            stack.append((child, sub, iter(child.items() if isinstance(child, dict) else child), depth + 1))
        else:
            _put(target, key, leaf(child))
    return _freeze(value, root)


class _Slot:
    """A placeholder for a child container, replaced by the real one when freezing tuples."""

    __slots__ = ("source", "target")

    def __init__(self, source: Any, target: Any):
        self.source, self.target = source, target


def _put(target: Any, key: Any, value: Any) -> None:
    if isinstance(target, dict):
        target[key] = value
    else:
        target.append(value)


def _freeze(source: Any, target: Any) -> Any:
    """Replace slots by their containers (tuples where the source was a tuple), bottom-up, iteratively."""
    order: list[tuple[Any, Any]] = []
    stack = [(source, target)]
    while stack:
        s, t = stack.pop()
        order.append((s, t))
        values = t.values() if isinstance(t, dict) else t
        for v in values:
            if isinstance(v, _Slot):
                stack.append((v.source, v.target))
    built: dict[int, Any] = {}
    for s, t in reversed(order):
        if isinstance(t, dict):
            for k, v in t.items():
                if isinstance(v, _Slot):
                    t[k] = built[id(v.target)]
            built[id(t)] = t
        else:
            for i, v in enumerate(t):
                if isinstance(v, _Slot):
                    t[i] = built[id(v.target)]
            built[id(t)] = tuple(t) if isinstance(s, tuple) else t
    return built[id(target)]


def decode_here(data: bytes, caps: Caps = Caps()) -> Any:
    """Check, decode and rebuild ``data`` in this process (the child's work; also for tests)."""
    import torch

    _check_zip(data, caps)
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("decoding the answer needed more memory than allowed") from None
    except RecursionError:
        raise DecodeError("the answer is nested too deep") from None
    except Exception as e:  # noqa: BLE001 - anything else is not plain data
        raise DecodeError(f"the answer is not plain data ({type(e).__name__})") from None
    return rebuild(value, caps)


# --- the helper process and its children ---------------------------------------------------------

_HEADER = struct.Struct("!cQ")  # kind (b"o" ok, b"e" error), length
_JOB = struct.Struct("!Qd")  # length, timeout in seconds


def _read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    out = bytearray()
    while len(out) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(1 << 20, n - len(out)))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _child(data: bytes, caps: Caps, out_fd: int, memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    try:
        with open("/proc/self/statm") as f:
            base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        base = 0
    if base and sys.platform.startswith("linux"):
        resource.setrlimit(resource.RLIMIT_AS, (base + memory_bytes, base + memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import torch

    try:
        value = decode_here(data, caps)
        buffer = io.BytesIO()
        torch.save(value, buffer)
        reply = _HEADER.pack(b"o", buffer.getbuffer().nbytes) + buffer.getvalue()
    except DecodeError as e:
        message = str(e)[:300].encode()
        reply = _HEADER.pack(b"e", len(message)) + message
    except MemoryError:
        message = b"decoding the answer needed more memory than allowed"
        reply = _HEADER.pack(b"e", len(message)) + message
    _write_all(out_fd, reply)


def serve(memory_bytes: int, cpu_seconds: int, timeout: float) -> None:
    """The helper's loop: read a job on stdin, fork a child for it, answer on stdout."""
    import torch  # noqa: F401 - imported once here, so each child starts with it

    torch.set_num_threads(1)
    caps = Caps()
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    while True:
        try:
            length, job_timeout = _JOB.unpack(_read_exact(stdin, _JOB.size))
            data = _read_exact(stdin, length)
        except EOFError:
            return
        job_timeout = max(0.1, min(timeout, job_timeout))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(r)
            try:
                _child(data, caps, w, memory_bytes, cpu_seconds)
            finally:
                os._exit(0)
        os.close(w)
        deadline = time.monotonic() + job_timeout
        try:
            kind, length = _HEADER.unpack(_read_exact(r, _HEADER.size, deadline))
            payload = _read_exact(r, length, deadline)
            reply = _HEADER.pack(kind, len(payload)) + payload
        except TimeoutError:
            message = f"decoding the answer took more than {job_timeout:.3g} s".encode()
            reply = _HEADER.pack(b"e", len(message)) + message
        except (EOFError, struct.error):
            message = b"decoding the answer crashed the decoder"
            reply = _HEADER.pack(b"e", len(message)) + message
        finally:
            os.close(r)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(pid, 0)
        _write_all(stdout, reply)


class AnswerDecoder:
    """The grader's side: a helper process, started on first use and again whenever it fails."""

    def __init__(self, memory_bytes: int = 1 << 30, cpu_seconds: int = 10, timeout: float = 15.0):
        self.memory_bytes, self.cpu_seconds, self.timeout = memory_bytes, cpu_seconds, timeout
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            code = ("import sys; from minimoe.grading.decode import serve; "
                    f"serve({self.memory_bytes}, {self.cpu_seconds}, {self.timeout})")
            pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = pkg_parent
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, env=env, close_fds=True)
        return self._proc

    def decode(self, data: bytes, timeout: float | None = None) -> Any:
        """The plain value ``data`` holds, or DecodeError saying why it is refused.

        ``timeout`` (at most the decoder's own) bounds the child's work on this answer.
        """
        import torch

        timeout = self.timeout if timeout is None else min(self.timeout, timeout)
        if timeout <= 0:
            raise DecodeError("no time was left to decode the answer")
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(_JOB.pack(len(data), timeout))
                proc.stdin.write(data)
                proc.stdin.flush()
                deadline = time.monotonic() + timeout + 60  # the helper's own start, on first use
                kind, length = _HEADER.unpack(_read_exact(proc.stdout.fileno(), _HEADER.size, deadline))
                payload = _read_exact(proc.stdout.fileno(), length, deadline)
            except (OSError, EOFError, TimeoutError, struct.error):
                self.close()
                raise DecodeError("the answer could not be decoded (the decoder stopped)", costly=True) from None
        if kind == b"e":
            message = payload.decode(errors="replace")
            raise DecodeError(message, costly=message.startswith(("decoding the answer took", "decoding the answer crashed",
                                                                 "decoding the answer needed")))
        return torch.load(io.BytesIO(payload), weights_only=True)

    def warm(self) -> None:
        """Start the helper and wait until it has torch imported (before any deadline starts)."""
        buffer = io.BytesIO()
        import torch

        torch.save({"status": "ok"}, buffer)
        self.decode(buffer.getvalue())

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except (OSError, AttributeError):
                    pass
            proc.wait()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


_shared: AnswerDecoder | None = None


def shared_decoder() -> AnswerDecoder:
    """One helper per grader process."""
    global _shared
    if _shared is None:
        _shared = AnswerDecoder()
    return _shared
