"""Peak resident memory of a process, for the figures a run reports about itself."""

from __future__ import annotations


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory (VmHWM) of `pid`, or of this process when None. VmHWM on Linux: unlike
    ru_maxrss it does not count what the parent had before exec. 0.0 for another process whose
    figure cannot be read (gone, or no /proc)."""
    try:
        with open(f"/proc/{pid if pid is not None else 'self'}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    if pid is not None:
        return 0.0
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
