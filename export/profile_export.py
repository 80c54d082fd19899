"""Run one `crossonnx export` in a child process and measure each step's wall time and peak resident memory.

    python export/profile_export.py CHECKPOINT OUT [--gate ...] [--json FILE]

Memory is read from /proc: the export process's peak resident set (VmHWM), which is reset at each step line, so each
step's peak is exact; where the reset is not allowed, resident memory (VmRSS) sampled every 0.2 s, which can miss a
step's shorter peaks (never the total's). Steps are the export's own numbered log lines.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from crossonnx.bench.machine import process_memory_mb

STEP = re.compile(r"^\[(\d+)/(\d+)\s+([\d.]+)s\] (.*)$")
SAMPLE_S = 0.2


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current resident set (Linux: /proc/PID/clear_refs); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def profile_export(checkpoint: Path, out: Path, args: list[str], echo: bool = True) -> dict:
    """Export ``checkpoint`` to ``out`` with the CLI's ``args``; per step: seconds and peak RSS (MiB)."""
    command = [sys.executable, "-c", "from crossonnx.cli import main; main()", "export", str(checkpoint),
               "--out", str(out), "--overwrite", *args]
    started = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    steps: list[dict] = [{"step": "starting python", "started_s": 0.0, "peak_rss_mb": 0.0}]
    peak = {"hwm": 0.0, "resets": True}
    lock = threading.Lock()

    def record() -> None:
        """The peak so far into the current step (and the run's); call with ``lock`` held."""
        hwm = process_memory_mb("VmHWM", child.pid)
        current = hwm if peak["resets"] else process_memory_mb("VmRSS", child.pid)
        if current is not None:
            steps[-1]["peak_rss_mb"] = max(steps[-1]["peak_rss_mb"], current)
        if hwm is not None:
            peak["hwm"] = max(peak["hwm"], hwm)

    def sample() -> None:
        while child.poll() is None:
            with lock:
                record()
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log: list[str] = []
    assert child.stderr is not None
    for line in child.stderr:
        line = line.rstrip("\n")
        log.append(line)
        if echo:
            print(line, file=sys.stderr, flush=True)
        match = STEP.match(line)
        if match:
            with lock:
                record()
                peak["resets"] = peak["resets"] and _reset_peak(child.pid)
                steps.append({"step": match.group(4), "started_s": time.perf_counter() - started,
                              "peak_rss_mb": 0.0})
    code = child.wait()
    sampler.join()
    total = time.perf_counter() - started
    for step, following in zip(steps, [*steps[1:], {"started_s": total}], strict=True):
        step["seconds"] = round(following["started_s"] - step["started_s"], 1)
        step["peak_rss_mb"] = round(step["peak_rss_mb"])
        del step["started_s"]
    if code != 0:
        raise RuntimeError(f"export failed ({code}):\n" + "\n".join(log[-20:]))
    return {"seconds": round(total, 1), "peak_rss_mb": round(peak["hwm"]), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--json", type=Path, help="also write the profile here")
    args, export_args = parser.parse_known_args()
    profile = profile_export(args.checkpoint, args.out, export_args)
    for step in profile["steps"]:
        print(f"{step['seconds']:8.1f} s {step['peak_rss_mb']:7d} MB  {step['step']}")
    print(f"total {profile['seconds']:.1f} s, peak {profile['peak_rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(profile, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
