"""A benchmark process's own peak resident memory, from /proc (standard library only).

The benchmark workers load this file; the bench-train worker loads it by path, since the `bitdistill` it
measures may be an older checkout that lacks it.
"""

from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    """This process's own peak RSS. ru_maxrss survives execve on Linux, so a worker started by a parent
    that had just built a 4 GB model would report the parent's peak; VmHWM belongs to this process only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Start the peak over from the current RSS (so it covers what follows, not a load before); False
    where the kernel does not allow it, and peak_rss_mib then covers the whole process."""
    try:  # writing 5 to clear_refs resets VmHWM
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
