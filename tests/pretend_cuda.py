"""Run GPU-only code paths on a CPU: a pretend CUDA device, for tests.

``pretend_cuda(monkeypatch)`` makes ``torch.cuda.is_available()`` true, answers the device queries a
notebook makes (name, capability, memory, bf16 support), and enters ``PretendCuda``: a
``TorchFunctionMode`` under which a tensor moved or created "on cuda" is a CPU tensor carrying a
mark. Marks spread through every op; ``t.device`` and ``t.is_cuda`` report the pretend device; and
what real CUDA refuses is refused here too: an op mixing a "cuda" tensor with a CPU tensor of one
or more dimensions, and turning a "cuda" tensor into NumPy. A branch that runs only on a GPU and
hands the wrong device to a kernel is therefore caught on a CPU.

The Triton backend is stubbed: compiled Triton (what a CUDA machine gets) refuses CPU tensors, as
``triton_path._check_mode`` does for real; the stub then computes with the torch path.
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

MARK = "_pretend_cuda"
CUDA = torch.device("cuda", 0)
_DEVICE_GET = torch.Tensor.device.__get__
_IS_CUDA_GET = torch.Tensor.is_cuda.__get__
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
_MIXING_ALLOWED = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_, torch.autograd.grad,
                   torch.autograd.backward, torch.Tensor.backward}


def on_cuda(t: object) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, MARK, False)


def _mark(out, value: bool = True):
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            setattr(t, MARK, value)
    return out


def _target(device) -> str | None:
    if isinstance(device, torch.Tensor):
        return "cuda" if on_cuda(device) else "cpu"
    if isinstance(device, (str, torch.device)):
        return torch.device(device).type
    return None


class PretendCuda(TorchFunctionMode):
    """Tensors "on cuda" are marked CPU tensors; see the module's docstring."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == _DEVICE_GET:
            return CUDA if on_cuda(args[0]) else func(*args)
        if func == _IS_CUDA_GET:
            return on_cuda(args[0])
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and on_cuda(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        if func in _MOVES:
            return self._move(func, args, kwargs)
        want = _target(kwargs.get("device"))
        if want is not None:  # a factory: torch.zeros(..., device="cuda")
            kwargs["device"] = "cpu"
            return _mark(func(*args, **kwargs), want == "cuda")
        if func is torch.autograd.grad:  # each gradient lives where its input does
            inputs = kwargs.get("inputs", args[1] if len(args) > 1 else ())
            inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
            out = func(*args, **kwargs)
            for g, t in zip(out, inputs):
                if g is not None:
                    setattr(g, MARK, on_cuda(t))
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        cuda_in = any(on_cuda(t) for t in tensors)
        if cuda_in and func not in _MIXING_ALLOWED and any(not on_cuda(t) and t.dim() > 0 for t in tensors):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"cuda:0 and cpu! ({getattr(func, '__name__', func)}, under the pretend GPU)")
        out = func(*args, **kwargs)
        return _mark(out) if cuda_in else out

    @staticmethod
    def _move(func, args, kwargs):
        t = args[0]
        if func is torch.Tensor.cuda:
            want = "cuda"
        elif func is torch.Tensor.cpu:
            want = "cpu"
        else:
            want = _target(kwargs.get("device"))
            rest = []
            for a in args[1:]:
                if want is None and _target(a) is not None:
                    want = _target(a)
                    if isinstance(a, torch.Tensor):
                        rest.append(a.dtype)
                    continue
                rest.append(a)
            kwargs.pop("device", None)
            args = (t, *rest)
        if want is None:  # a dtype change: the result stays where the tensor was
            out = torch.Tensor.to(*args, **kwargs)
            return _mark(out, on_cuda(t)) if out is not t else out
        if (want == "cuda") == on_cuda(t):
            return torch.Tensor.to(*args, **kwargs) if func is torch.Tensor.to else t
        out = torch.Tensor.to(*args, **kwargs) if func is torch.Tensor.to else t
        if out is t:
            out = t.clone()  # another device: another tensor
        return _mark(out, want == "cuda")


def _stub_triton(monkeypatch) -> None:
    from minimoe.dispatch import sort, triton_path

    def check_mode(device: torch.device) -> None:
        if device.type != "cuda":  # what compiled Triton says to CPU tensors (triton_path._check_mode)
            raise triton_path.TritonUnavailable(
                f"backend 'triton': tensors on {device.type} need interpreted kernels, but Triton was first "
                "imported without TRITON_INTERPRET=1 in this process (pretend GPU)")

    def apply(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask):
        for name, t in (("x", x), ("topk_idx", topk_idx), ("w_gate", w_gate)):
            assert on_cuda(t), f"the Triton stub got {name} on the CPU under the pretend GPU"
        return sort._SortedExpertFFN.apply(x, topk_idx, topk_weight, w_gate, w_up, w_down, True, token_mask)

    monkeypatch.setattr(triton_path, "_check_mode", check_mode)
    monkeypatch.setattr(triton_path._TritonExpertFFN, "apply", staticmethod(apply))


@contextlib.contextmanager
def pretend_cuda(monkeypatch, free_bytes: int = 8 * 2**30, capability: tuple[int, int] = (9, 0)):
    """A pretend CUDA GPU of ``capability`` with ``free_bytes`` free, inside the ``with`` block."""
    props = types.SimpleNamespace(name="pretend GPU", major=capability[0], minor=capability[1],
                                  total_memory=2 * free_bytes, multi_processor_count=132,
                                  shared_memory_per_block_optin=232_448)
    for name, value in {
        "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
        "get_device_capability": lambda device=None: capability, "get_device_name": lambda device=None: props.name,
        "get_device_properties": lambda device=None: props, "synchronize": lambda device=None: None,
        "is_bf16_supported": lambda including_emulation=True: capability >= (8, 0),
        "mem_get_info": lambda device=None: (free_bytes, 2 * free_bytes),
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    _stub_triton(monkeypatch)
    with PretendCuda():
        yield
