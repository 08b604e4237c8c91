"""``python -m edgecomp.bench.probe ARTIFACT FEEDS.npz THREADS``: load, run once, print peak RSS as JSON.

Runs in a fresh interpreter so nothing else (torch, the exporter) is in the process.
"""

import json
import resource
import sys

import numpy as np


def main() -> None:
    from edgecomp.runtime import open_artifact

    path, npz, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    feeds = dict(np.load(npz))
    runner = open_artifact(path, threads=threads)
    runner.run({k: v for k, v in feeds.items() if k in runner.input_names})
    print(json.dumps({"peak_rss_mb": round(peak_rss_kib() / 1024, 1)}))


def peak_rss_kib() -> int:
    # VmHWM belongs to the address space created by exec, so it is this process's own peak. ru_maxrss
    # is not: Linux carries it over from the forked parent (here the exporter holding torch, ~1.3 GB).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
