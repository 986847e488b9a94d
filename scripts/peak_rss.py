#!/usr/bin/env python3
"""Run a command and report its peak memory split by kind, sampled from /proc every 50 ms:
peak VmRSS, peak RssAnon (what the program allocated) and peak RssFile (touched pages of
memory-mapped files such as the model's safetensors, which the kernel can drop at will).
Samples can miss a short spike: quote /usr/bin/time -v's "Maximum resident set size" (the
kernel's exact peak of the total) beside them.

Usage: scripts/peak_rss.py [--json OUT] -- COMMAND [ARGS...]
"""
import json
import subprocess
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    out = None
    if args[:1] == ["--json"]:
        out, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    p = subprocess.Popen(args)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    start = time.time()
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in peak:
                        peak[k] = max(peak[k], int(v.split()[0]) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    res = {"command": args, "exit": p.returncode, "seconds": round(time.time() - start, 2),
           "peak_rss_bytes": peak["VmRSS"], "peak_anon_bytes": peak["RssAnon"], "peak_file_bytes": peak["RssFile"]}
    text = json.dumps(res, indent=1)
    print(text, file=sys.stderr)
    if out:
        open(out, "w").write(text + "\n")
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
