#!/usr/bin/env bash
# Mutation testing of the semantic core (docs/testing.md). Not part of CI: about an hour on 2 cores.
#   mutation/run.sh                      every module of mutation/cosmic-ray.toml
#   mutation/run.sh resnet_jax/steps.py  only the modules named
# Mutates the working tree in place (restored after each mutant): run on a clean, committed tree.
# Leaves the session in mutation/session.sqlite and prints cosmic-ray's report.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
BIN="$(dirname "$(command -v "$PY")")"
config=mutation/cosmic-ray.toml
if [ $# -gt 0 ]; then
    config=$(mktemp --suffix=.toml)
    trap 'rm -f "$config"' EXIT
    "$PY" - "$config" "$@" <<'PY'
import re, sys
text = open("mutation/cosmic-ray.toml").read()
modules = ", ".join(f'"{m}"' for m in sys.argv[2:])
open(sys.argv[1], "w").write(re.sub(r"module-path = \[[^\]]*\]", f"module-path = [{modules}]", text))
PY
fi
session=mutation/session.sqlite
rm -f "$session"
export PATH="$BIN:$PATH"
cosmic-ray init "$config" "$session"
cr-filter-operators "$session" "$config"
nice -n 10 cosmic-ray exec "$config" "$session"
cr-report --show-pending "$session" | tail -n 3
"$PY" mutation/summary.py "$session"
