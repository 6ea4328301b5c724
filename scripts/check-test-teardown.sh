#!/usr/bin/env bash
# Teardown check: run tests that fail on purpose (tests/test_teardown_probe.py) and show that
# nothing they started is left behind: no `transcribed run` process, no mount under their
# temporary folder. Exits 1, naming what was left, when teardown is broken.
#
# Usage: scripts/check-test-teardown.sh   (PYTEST=/path/to/pytest to use another pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

pytest_bin=${PYTEST:-.venv/bin/pytest}
work=$(mktemp -d "${TMPDIR:-/tmp}/teardown-check.XXXXXX")
markers=$work/markers
leftovers=()

# Whatever this script finds, it cleans up afterwards: only processes and mounts that belong
# to its own temporary folder.
cleanup() {
  local pid target
  for pid in $(pgrep -f -- "$work/" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  while read -r target; do
    umount -l "$target" 2>/dev/null || true
  done < <(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  rm -rf "$work"
}
trap cleanup EXIT

status=0
TEARDOWN_PROBE_DIR=$markers "$pytest_bin" -q -p no:cacheprovider --basetemp="$work/tmp" \
  tests/test_teardown_probe.py >"$work/pytest.log" 2>&1 || status=$?

# The probes must have run and failed (exit 1); anything else means this check tested nothing.
if [[ $status -ne 1 ]]; then
  cat "$work/pytest.log"
  echo "teardown check: expected the probe tests to fail (exit 1), pytest exited $status" >&2
  exit 1
fi
for name in assertion timeout; do
  if [[ ! -s $markers/$name.pid ]]; then
    cat "$work/pytest.log"
    echo "teardown check: the '$name' probe never started its daemon" >&2
    exit 1
  fi
done
if [[ $(id -u) -eq 0 && ! -s $markers/mount.path ]]; then
  cat "$work/pytest.log"
  echo "teardown check: running as root, but the mount probe made no mount" >&2
  exit 1
fi

for name in assertion timeout; do
  pid=$(<"$markers/$name.pid")
  # Alive, and not a zombie waiting for a reaper (field 3 of /proc/PID/stat is the state).
  if [[ -r /proc/$pid/stat && $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
    leftovers+=("daemon pid $pid (the '$name' probe) is still running")
  fi
done
while read -r line; do
  leftovers+=("process still running: $line")
done < <(pgrep -af -- "transcribed run --config $work/" || true)
while read -r target; do
  leftovers+=("mount still in place: $target")
done < <(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo)

if ((${#leftovers[@]})); then
  printf 'teardown check: %s\n' "${leftovers[@]}" >&2
  exit 1
fi
probes=$(grep -c '^FAILED tests/test_teardown_probe.py' "$work/pytest.log" || true)
echo "teardown check: $probes deliberately failing tests left no daemon and no mount behind"
