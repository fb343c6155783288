"""Per-module mutation score of a cosmic-ray session, and the surviving mutants' diffs.

Usage: python mutation/summary.py mutation/session.sqlite [--diffs]
"""

import collections
import json
import os
import subprocess
import sys


def main() -> None:
    session = sys.argv[1]
    cosmic_ray = os.path.join(os.path.dirname(sys.executable), "cosmic-ray")
    dump = subprocess.run([cosmic_ray, "dump", session], capture_output=True, text=True,
                          check=True).stdout
    counts = collections.defaultdict(collections.Counter)
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        module = item["mutations"][0]["module_path"]
        if result is None:
            counts[module]["pending"] += 1
        elif result["worker_outcome"] == "skipped":
            continue
        elif result["worker_outcome"] != "normal":
            counts[module][result["worker_outcome"]] += 1
        else:
            counts[module][result["test_outcome"]] += 1
            if result["test_outcome"] == "survived":
                survivors.append((module, item["mutations"][0], result["diff"]))
    print(f"{'module':40} {'mutants':>7} {'killed':>7} {'survived':>8} {'other':>6} {'score':>6}")
    for module, c in sorted(counts.items()):
        total = sum(c.values())
        other = total - c["killed"] - c["survived"]
        done = c["killed"] + c["survived"]
        score = f"{100 * c['killed'] / done:.1f}" if done else "-"
        print(f"{module:40} {total:7} {c['killed']:7} {c['survived']:8} {other:6} {score:>6}")
    if "--diffs" in sys.argv:
        for module, mutation, diff in survivors:
            print(f"\n## {module} {mutation['operator_name']} #{mutation['occurrence']}")
            print("\n".join(l for l in diff.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")))


if __name__ == "__main__":
    main()
