"""Import cost of robustzoo next to torch, measured side by side in fresh interpreters.

    python benchmarks/import_time.py [--repeats 7]

Prints the median wall time of ``import torch`` and ``import robustzoo`` (which imports torch),
their ratio, and checks that ``import robustzoo`` pulls in neither timm nor huggingface_hub.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPET = "import time, sys; t=time.perf_counter(); import {mod}; dt=time.perf_counter()-t; print(dt, {check})"



EPILOG = ("Runtime: seconds (fresh interpreters, about 30 s). Writes nothing: prints the timings.")

def run(mod: str, check: str = "0") -> float:
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(mod=mod, check=check)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    check = "int('timm' in sys.modules or 'huggingface_hub' in sys.modules)"
    torch_t, rz_t, models_t, heavy = [], [], [], set()
    for _ in range(args.repeats):  # interleaved so all see the same machine state
        torch_t.append(run("torch")[0])
        t, flag = run("robustzoo", check)
        rz_t.append(t)
        heavy.add(flag)
        t, flag = run("robustzoo.models", check)
        models_t.append(t)
        heavy.add(flag)
    mt, mr, mm = statistics.median(torch_t), statistics.median(rz_t), statistics.median(models_t)
    print("| import | median s | min s |\n|---|---|---|")
    print(f"| `import torch` | {mt:.3f} | {min(torch_t):.3f} |")
    print(f"| `import robustzoo` (lazy: torch not yet imported) | {mr:.3f} | {min(rz_t):.3f} |")
    print(f"| `import robustzoo.models` (imports torch) | {mm:.3f} | {min(models_t):.3f} |")
    print(f"\nrobustzoo / torch = {mr / mt:.3f}; robustzoo.models / torch = {mm / mt:.3f}")
    print(f"timm or huggingface_hub imported by `import robustzoo`: {'yes' if '1' in heavy else 'no'}")


if __name__ == "__main__":
    main()
