"""The kernel's dma-heap driver at the system-call layer, for picamera2's DmaAllocator.

picamera2 0.3.31 allocates every frame buffer through DmaAllocator (Picamera2.__init__:
`self.allocator = DmaAllocator() if allocator is None else allocator`), never through
libcamera's FrameBufferAllocator. DmaAllocator (picamera2/allocators/dmaallocator.py and
picamera2/dma_heap.py @ v0.3.31, 4a8e3d93546470e411b0ac637d174259e8a79142) makes these calls:
- os.open("/dev/dma_heap/vidbuf_cached" or "/dev/dma_heap/linux,cma"): RuntimeError("Could
  not open any dmaHeap device") when neither exists, which is the case on this machine;
- fcntl.ioctl(heap, DMA_HEAP_IOCTL_ALLOC, dma_heap_allocation_data): a new dma-buf fd of
  `len` bytes in `.fd` (linux/dma-heap.h);
- fcntl.ioctl(buf, DMA_BUF_SET_NAME, name) and DMA_BUF_IOCTL_SYNC with dma_buf_sync
  (linux/dma-buf.h) around every CPU access;
- mmap.mmap(buf, size) and os.close(buf), which work on any fd that can be mapped.

`install(dma_heap_module, dmaallocator_module)` puts a DmaHeapKernel in front of those two
modules' `os` and `fcntl` names: the heap nodes open, an allocation is a memfd
(os.memfd_create) of the asked size, naming and syncing succeed on the buffers it made
(memfd memory is coherent), and every other call goes to the real os and fcntl. Nothing
else of picamera2 is touched. It records what was allocated, for tests.
"""

from __future__ import annotations

import fcntl
import os
import threading
from types import ModuleType
from typing import Any

HEAP_NODES = ("/dev/dma_heap/vidbuf_cached", "/dev/dma_heap/linux,cma")


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
DMA_HEAP_IOCTL_ALLOC = _ioc(_IOC_READ | _IOC_WRITE, "H", 0, 24)  # struct dma_heap_allocation_data
DMA_BUF_IOCTL_SYNC = _ioc(_IOC_WRITE, "b", 0, 8)  # struct dma_buf_sync
DMA_BUF_SET_NAME = _ioc(_IOC_WRITE, "b", 1, 8)  # const char * (DMA_BUF_SET_NAME_B on 64 bit)


class DmaHeapKernel:
    """Answers dma-heap system calls with memfds; everything else goes to the real kernel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Known by the open file, not the fd number: a dup (libcamera's SharedFD keeps one)
        # is the same dma-buf, as in the kernel.
        self.heaps: set[tuple[int, int]] = set()
        self.buffers: dict[tuple[int, int], tuple[str, int]] = {}  # file -> (name, size)
        self.allocations = 0

    @staticmethod
    def _file(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    # -- os ----------------------------------------------------------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if str(path) in HEAP_NODES:
            fd = os.memfd_create("dma_heap", os.MFD_CLOEXEC)
            with self._lock:
                self.heaps.add(self._file(fd))
            return fd
        return os.open(path, flags, mode, dir_fd=dir_fd)

    def close(self, fd: int) -> None:
        os.close(fd)  # the buffer lives on while a dup of it is open, as a dma-buf does

    # -- fcntl -------------------------------------------------------------------------------

    def ioctl(self, fd: Any, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        number = fd if isinstance(fd, int) else fd.fileno()
        request &= 0xFFFFFFFF  # videodev2's _IOWR gives the request as a signed 32-bit int
        try:
            file = self._file(number)
        except OSError:
            file = (-1, -1)
        with self._lock:
            is_heap, is_buffer = file in self.heaps, file in self.buffers
        if request == DMA_HEAP_IOCTL_ALLOC and is_heap:
            buffer = os.memfd_create(f"dmabuf-{self.allocations}", os.MFD_CLOEXEC)
            os.ftruncate(buffer, int(arg.len))
            arg.fd = buffer
            with self._lock:
                self.buffers[self._file(buffer)] = ("", int(arg.len))
                self.allocations += 1
            return 0
        if request == DMA_BUF_SET_NAME and is_buffer:
            name = arg.decode() if isinstance(arg, bytes) else str(arg)
            with self._lock:
                self.buffers[file] = (name, self.buffers[file][1])
            return name.encode()
        if request == DMA_BUF_IOCTL_SYNC and is_buffer:
            return 0
        return fcntl.ioctl(fd, request if request < 2**31 else request - 2**32, arg, mutate_flag)


class _Front:
    """A module's view of `os` or `fcntl` with some calls answered by the fake kernel."""

    def __init__(self, real: ModuleType, overrides: dict[str, Any]) -> None:
        self._real, self._overrides = real, overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._real, name)


def install(*modules: ModuleType) -> DmaHeapKernel:
    """Answer the dma-heap calls these modules make (their `os` and `fcntl` globals)."""
    kernel = DmaHeapKernel()
    for module in modules:
        # Check the constants against the module's own, so a changed ABI fails loudly here.
        for name in ("DMA_HEAP_IOCTL_ALLOC", "DMA_BUF_IOCTL_SYNC", "DMA_BUF_SET_NAME"):
            if hasattr(module, name) and getattr(module, name) & 0xFFFFFFFF != globals()[name]:
                raise AssertionError(f"{module.__name__}.{name} is {getattr(module, name):#x}, "
                                     f"linux/dma-*.h says {globals()[name]:#x}")
        if hasattr(module, "os"):
            module.os = _Front(os, {"open": kernel.open, "close": kernel.close})
        if hasattr(module, "fcntl"):
            module.fcntl = _Front(fcntl, {"ioctl": kernel.ioctl})
    return kernel
