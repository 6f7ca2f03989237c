"""Give back the memory of weights that surgery replaced or removed, when they were read from a
memory-mapped checkpoint.

transformers loads a safetensors checkpoint memory-mapped (a private, copy-on-write mapping of
the file), each weight a view of its own bytes. The file stays mapped while any weight of the
model lives, so the pages of a weight that slicing replaced with a smaller copy, or of a block
that was removed, stay resident and counted: on the 1.5B model the default plan's sliced MLPs
sat beside their dense originals, 1.66× the checkpoint at the end of the run. ``release`` tells
the kernel those pages are no longer needed (``madvise(MADV_DONTNEED)`` on the whole pages of
the weight's bytes). Only bytes inside a file mapping are released (anonymous memory belongs to
the allocator), and only when no other tensor shares the weight's storage. Were a released
weight read again, it would read the checkpoint's bytes (the file), not zeros.

``page_out`` is the lossless sibling for weights still in use: a walk over the blocks (scoring,
the refit's statistics) runs each block once, so once it has passed a block the kernel may
reclaim that block's file pages (``MADV_PAGEOUT``: a page written since the load is kept or
swapped, never dropped); the next pass reads them back from the file. A walk then holds about
one block's weights resident instead of the whole checkpoint.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from collections.abc import Callable, Iterable

import torch

MADV_DONTNEED = 4  # Linux
MADV_PAGEOUT = 21  # Linux 5.4+


def release(tensors: Iterable[torch.Tensor]) -> int:
    """Release the file-mapped pages of ``tensors`` (weights about to be dropped); returns the
    bytes given back (0 off Linux, on other devices, for anonymous or shared storages)."""
    return _advise_mapped(tensors, _sole_cpu_span, MADV_DONTNEED)


def page_out(tensors: Iterable[torch.Tensor]) -> int:
    """Let the kernel reclaim the file-mapped pages of ``tensors`` (weights that will not be
    read for a while); returns the bytes advised (0 off Linux, on other devices, for anonymous
    storages, or where the kernel refuses the advice)."""
    return _advise_mapped(tensors, _cpu_span, MADV_PAGEOUT)


def _advise_mapped(
    tensors: Iterable[torch.Tensor],
    span_of: Callable[[torch.Tensor], tuple[int, int] | None],
    advice: int,
) -> int:
    """``advice`` on the storage of each of ``tensors`` (once a storage) that ``span_of``
    accepts and a private file mapping holds; the bytes advised."""
    if sys.platform != "linux":
        return 0
    mappings, advised, seen = None, 0, set()
    for tensor in tensors:
        span = span_of(tensor)
        if span is None or span in seen:
            continue
        seen.add(span)
        mappings = _file_mappings() if mappings is None else mappings
        if any(lo <= span[0] and span[1] <= hi for lo, hi in mappings):
            advised += _advise(span[0], span[1], advice)
    return advised


def _cpu_span(tensor: torch.Tensor) -> tuple[int, int] | None:
    """(first byte, end) of ``tensor``'s storage when it is on the CPU and not empty."""
    if tensor.device.type != "cpu":
        return None
    storage = tensor.untyped_storage()
    if storage.nbytes() == 0:
        return None
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _sole_cpu_span(tensor: torch.Tensor) -> tuple[int, int] | None:
    """``_cpu_span`` when nothing else holds the storage (the count includes the wrapper
    ``untyped_storage`` makes), else None."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    span = _cpu_span(tensor)
    if span is None or count is None or count(tensor.untyped_storage()._cdata) > 2:
        return None
    return span


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges of this process's private mappings of files."""
    ranges = []
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[4] != "0" and fields[1].endswith("p"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def _advise(start: int, end: int, advice: int) -> int:
    """madvise(``advice``) on the whole pages inside [start, end): a page shared with a
    neighbouring weight is kept."""
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, end // page * page
    if hi <= lo:
        return 0
    if _madvise()(lo, hi - lo, advice) != 0:
        return 0
    return hi - lo


@functools.cache
def _madvise():
    """libc's madvise, its argument types declared (looked up once)."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise
