"""One command for every benchmark table; prints them and writes BENCHMARKS.md.

    .venv/bin/python benchmarks/run_all.py [--quick]

``--quick`` skips torch.compile and uses 2 s solver limits (a few minutes in all).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".md") as out:
        cmd = [sys.executable, str(HERE / script), *args, "--markdown", out.name]
        print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return Path(out.name).read_text()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    limit = "2" if args.quick else "5"
    import torch
    sections = [
        ("Planning: memplan vs eager PyTorch and torch.compile",
         "`benchmarks/plan_bench.py`" + (" --no-inductor" if args.quick else ""),
         run("plan_bench.py", *(["--no-inductor"] if args.quick else []))),
        ("Fusion: kernels, bytes moved and peak with and without it, beside Inductor",
         "`benchmarks/fusion_bench.py`" + (" --no-inductor" if args.quick else ""),
         run("fusion_bench.py", *(["--no-inductor"] if args.quick else []))),
        ("Attention at long sequences: query-block loop vs eager SDPA vs matmul-softmax",
         "`benchmarks/attention_bench.py`" + (" --no-inductor --lengths 512 2048" if args.quick else ""),
         run("attention_bench.py", *(["--no-inductor", "--lengths", "512", "2048"] if args.quick else []))),
        ("Capture and code generation add no memory (free-at-last-use emission)",
         "`benchmarks/capture_memory.py`", run("capture_memory.py")),
        ("Never above eager: 29 transformers families (planned vs measured vs eager)",
         "`benchmarks/families.py`", run("families.py")),
        ("Training under a budget: memplan beside eager, checkpointing and torch.compile",
         "`benchmarks/train_bench.py --models gpt2 --fractions 1,0.7,0.5`" + (" --no-inductor" if args.quick else ""),
         run("train_bench.py", "--models", "gpt2", "--fractions", "1,0.7,0.5", *(["--no-inductor"] if args.quick else []))),
        ("Static allocation vs omnimalloc", f"`benchmarks/alloc_bench.py --time-limit {limit}`",
         run("alloc_bench.py", "--time-limit", limit)),
        ("Scheduling solver on synthetic graphs", f"`benchmarks/sched_bench.py --time-limit {limit}`",
         run("sched_bench.py", "--time-limit", limit)),
    ]
    header = (f"# memplan benchmarks\n\nMeasured {datetime.date.today()} on this machine: {platform.machine()}, "
              f"2 cores, torch {torch.__version__}, Python {platform.python_version()}. "
              "Regenerate with `.venv/bin/python benchmarks/run_all.py`.\n")
    body = "\n".join(f"\n## {title}\n\nCommand: {cmd}\n\n{table.strip()}\n" for title, cmd, table in sections)
    text = header + body
    (HERE.parent / "BENCHMARKS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
