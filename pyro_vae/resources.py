"""How much memory there is, so that inputs whose size a small file sets are refused before they are loaded.

A folder of small PNG files can decode to gigabytes, ``--image-size 100000`` asks for 10^10 pixels an
image: loading them would end in a :class:`MemoryError` traceback or take the machine's memory. Loaders
estimate what they will hold and call :func:`check_memory` first, which refuses with one line naming
the size when the estimate exceeds :func:`available_memory`.

The rule: the memory available is the smallest of

- ``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``psutil.virtual_memory().available`` when psutil is
  installed;
- the room left under a memory limit of the process's control group (cgroup v2 ``memory.max`` minus
  ``memory.current``: containers, SLURM jobs);
- the room left under an address-space limit (``ulimit -v``, ``RLIMIT_AS``) above the process's current
  size (``VmSize`` of ``/proc/self/status``).

When none of these can be read the check passes (nothing is known to refuse on).
"""

import os

from .errors import UserError


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _cgroup_room():
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.strip() for line in f if line.startswith("0::")]
        if not lines:
            return None
        folder = os.path.join("/sys/fs/cgroup", lines[0][3:].lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(folder, "memory.current")) as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None


def _address_space_room():
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    size = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    size = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - size)


def available_memory():
    """Bytes this process can still allocate by the rule of this module, or None when unknown."""
    known = [v for v in (_meminfo_available(), _cgroup_room(), _address_space_room()) if v is not None]
    return min(known) if known else None


def format_bytes(n):
    """``12.3 GB`` (powers of 1000, as ``df -H`` and most file managers show them), ``512 MB``, ``4 KB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(needed, what, advice="", available=None):
    """Refuse to load ``what`` when the estimate ``needed`` (bytes) exceeds the memory available.

    :param int needed: the estimated peak bytes of loading ``what``.
    :param str what: what would be loaded, with the numbers the estimate comes from (for the message).
    :param str advice: what to do instead, ending the message.
    :param available: bytes available (default :func:`available_memory`).
    :raises UserError: one line naming the size needed and the size available.
    """
    available = available_memory() if available is None else available
    if available is not None and needed > available:
        raise UserError(f"{what} would need about {format_bytes(needed)} of memory, more than the "
                        f"{format_bytes(available)} available" + (f"; {advice}" if advice else ""))  # fmt: skip
