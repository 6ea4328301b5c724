#!/usr/bin/env bash
# Docker smoke test: build the image, then run it twice with a temporary /data bind mount.
#   1. with an API key, against the fake AssemblyAI API (tests/fakeapi, run on the host) on loopback;
#   2. with no key, so the embedded engine transcribes a bundled sample.
# Each run must transcribe a dropped file, report healthy, run as a non-root user, and stop on
# `docker stop` with exit code 0 within the daemon's grace period.
#
# Needs a running Docker engine (host networking is used throughout, so no bridge is needed).
# Package index settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_CERT) set in the environment
# are passed to the build as build arguments; none is needed with direct access to PyPI.
# Usage: scripts/docker-smoke.sh        (IMAGE=name:tag to choose the tag)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-transcribed:smoke}
GRACE_S=10           # [daemon] grace_s default: docker stop must finish well within it
API_KEY=smoke-test-key-0123456789
RUN_ID="smoke-$$"
started=$(date +%s)

phase_started=
# say HEADING: start a phase, after saying how long the previous one took.
say() {
  local now
  now=$(date +%s)
  if [[ -n $phase_started ]]; then printf '   (%ss)\n' "$((now - phase_started))"; fi
  printf '\n== %s\n' "$*"
  phase_started=$now
}
fail() { printf 'docker-smoke: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d)
containers=()
fake_pid=
cleanup() {
  local code=$?
  if [[ -n $fake_pid ]]; then kill "$fake_pid" 2>/dev/null || true; wait "$fake_pid" 2>/dev/null || true; fi
  if ((code != 0)); then
    for name in ${containers[@]+"${containers[@]}"}; do
      printf '\n-- last log lines of %s\n' "$name" >&2
      docker logs --tail 30 "$name" >&2 2>&1 || true
    done
  fi
  for name in ${containers[@]+"${containers[@]}"}; do docker rm -f "$name" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
  exit "$code"
}
trap cleanup EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: re-run COMMAND every 0.5 s until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null; do
    (($(date +%s) < deadline)) || fail "$what: not within ${limit}s"
    sleep 0.5
  done
}

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

# Folders for one run, owned by the user the container runs as.
make_data() {
  local root=$1 owner=$2
  mkdir -p "$root"/{inbox,outbox,done,failed,state}
  if [[ $(id -u) == 0 ]]; then chown -R "$owner" "$root"; fi
}

healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$1") == healthy ]]; }
# log_has NAME PATTERN: the container's log matches (read whole: no SIGPIPE under pipefail).
log_has() {
  local text
  text=$(docker logs "$1" 2>&1)
  grep -q -- "$2" <<<"$text"
}

# The daemon's own process (not tini, not this probe) must run as a non-root user.
check_non_root() {
  local name=$1 uid
  uid=$(docker exec "$name" sh -c 'for p in /proc/[0-9]*; do
      if tr "\0" " " <"$p/cmdline" 2>/dev/null | grep -q "^/opt/transcribed/bin/python [^ ]*/[t]ranscribed run"; then
        awk "/^Uid:/ {print \$2}" "$p/status"; exit; fi; done')
  [[ -n $uid ]] || fail "$name: no daemon process found"
  [[ $uid != 0 ]] || fail "$name: the daemon runs as root"
  echo "   the daemon runs as uid $uid"
}

stop_within_grace() {
  local name=$1 t0 t1 code
  t0=$(date +%s.%N)
  docker stop --time 30 "$name" >/dev/null
  t1=$(date +%s.%N)
  code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
  local took
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "   docker stop took ${took}s, exit code $code"
  [[ $code == 0 ]] || fail "$name exited $code after docker stop"
  awk -v t="$took" -v g="$GRACE_S" 'BEGIN { exit !(t < g) }' || fail "$name took ${took}s to stop"
  log_has "$name" '"event": "daemon_stopped"' || fail "$name did not log daemon_stopped"
}

say "building $IMAGE and $IMAGE-cloud"
build_args=()
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CERT; do
  if [[ -n ${!var:-} ]]; then build_args+=(--build-arg "$var"); fi
done
build() {
  docker build --network host ${build_args[@]+"${build_args[@]}"} "$@" . >"$tmp/build.log" 2>&1 ||
    { tail -n 40 "$tmp/build.log" >&2; fail "docker build $*"; }
}
dangling_before=$(docker images -q --no-trunc --filter dangling=true | sort)
build -t "$IMAGE"
build --target cloud -t "$IMAGE-cloud"
# A rebuild leaves the images these tags named before, and the build stages, untagged: remove
# what became untagged here, or a machine that runs this often fills its disk (a gigabyte a run).
comm -13 <(echo "$dangling_before") <(docker images -q --no-trunc --filter dangling=true | sort) |
  xargs -r docker rmi >/dev/null 2>&1 || true
# The fake API server is test support: neither image may carry it.
for image in "$IMAGE" "$IMAGE-cloud"; do
  if docker run --rm --network host --entrypoint /opt/transcribed/bin/python "$image" -c \
      'import importlib.util as u, sys; sys.exit(0 if u.find_spec("fakeapi") or u.find_spec("transcribed.testing") else 1)'; then
    fail "$image contains the fake API server"
  fi
done
echo "   neither image contains the fake API server"
size_of() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }
echo "   $IMAGE: $(size_of "$IMAGE"), $IMAGE-cloud: $(size_of "$IMAGE-cloud")"

# compose.yaml must at least be a valid Compose file (running it needs a bridge network).
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif command -v docker-compose >/dev/null; then compose=(docker-compose)
else compose=(); fi
if ((${#compose[@]})); then
  mkdir -p "$tmp/compose"
  cp compose.yaml "$tmp/compose/"
  printf 'PUID=1000\nPGID=1000\n' >"$tmp/compose/.env"
  (cd "$tmp/compose" && "${compose[@]}" config -q) || fail "compose.yaml is not valid"
  echo "   compose.yaml: valid (${compose[*]} config)"
else
  echo "   compose.yaml: NOT checked (neither 'docker compose' nor docker-compose is installed)"
fi

# -- 1. cloud: the fake API, a key, a file ------------------------------------------------------
say "cloud: AssemblyAI backend against the fake API"
# The fake is test support, not in the image: it runs from the checkout, beside the container.
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3
PYTHONPATH=tests "$python" -m fakeapi --host 127.0.0.1 --port 0 --api-key "$API_KEY" \
  --latency-s 1 >"$tmp/fake.log" 2>&1 &
fake_pid=$!
fake_url() {
  grep -m1 -o 'http://127\.0\.0\.1:[0-9]*' "$tmp/fake.log"
}
wait_for 30 "fake API listening" fake_url
base_url=$(fake_url)
echo "   fake API at $base_url"

if [[ $(id -u) == 0 ]]; then user_args=(); owner=10001:10001; else
  user_args=(--user "$(id -u):$(id -g)"); owner=; fi
data="$tmp/cloud"
make_data "$data" "$owner"
port=$(free_port)
cloud="$RUN_ID-cloud"
containers+=("$cloud")
# No --init here: the daemon itself is PID 1 and must handle SIGTERM.
docker run -d --name "$cloud" --network host ${user_args[@]+"${user_args[@]}"} \
  -v "$data:/data" \
  -e ASSEMBLYAI_API_KEY="$API_KEY" \
  -e TRANSCRIBED_ASSEMBLYAI__BASE_URL="$base_url" \
  -e TRANSCRIBED_HTTP__LISTEN="127.0.0.1:$port" \
  -e TRANSCRIBED_WATCH__SETTLE_S=0.5 \
  --health-interval 1s --health-timeout 5s --health-retries 3 \
  "$IMAGE" >/dev/null
{ printf 'ID3\004\000\000\000\000\000\000'; head -c 40000 /dev/urandom; } >"$tmp/hello.mp3"
mv "$tmp/hello.mp3" "$data/inbox/hello.mp3"
wait_for 60 "cloud transcript" test -s "$data/outbox/hello.txt"
echo "   transcript: $(head -c 80 "$data/outbox/hello.txt")"
[[ -f $data/done/hello.mp3 ]] || fail "the source did not move to done/"
wait_for 60 "cloud container healthy" healthy "$cloud"
echo "   health: healthy"
log_has "$cloud" '"backend": "assemblyai"' || fail "the cloud run did not use the AssemblyAI backend"
check_non_root "$cloud"
# Stop with a job in flight: it is drained or left to resume, never failed.
{ printf 'ID3\004\000\000\000\000\000\000'; head -c 40000 /dev/urandom; } >"$tmp/second.mp3"
mv "$tmp/second.mp3" "$data/inbox/second.mp3"
wait_for 30 "second file picked up" log_has "$cloud" '"path": "second.mp3"'
stop_within_grace "$cloud"
[[ ! -e $data/failed/second.mp3 ]] || fail "the in-flight file failed on shutdown"

# -- 2. local: no key, a bundled sample ------------------------------------------------------------
say "local: embedded engine, no API key"
sample=samples/weather.mp3
[[ -f $sample ]] || fail "$sample is missing"
if [[ $(id -u) == 0 ]]; then user_args=(--user 12345:12345); owner=12345:12345; else
  user_args=(--user "$(id -u):$(id -g)"); owner=; fi
data="$tmp/local"
make_data "$data" "$owner"
port=$(free_port)
local_name="$RUN_ID-local"
containers+=("$local_name")
# An arbitrary UID with no account in the image, and tini (--init) as PID 1 as documented.
docker run -d --name "$local_name" --network host --init "${user_args[@]}" \
  -v "$data:/data" \
  -e TRANSCRIBED_HTTP__LISTEN="127.0.0.1:$port" \
  -e TRANSCRIBED_WATCH__SETTLE_S=0.5 \
  --health-interval 1s --health-timeout 5s --health-retries 3 \
  "$IMAGE" >/dev/null
cp "$sample" "$tmp/weather.mp3"
if [[ -n $owner ]]; then chown "$owner" "$tmp/weather.mp3"; fi
mv "$tmp/weather.mp3" "$data/inbox/weather.mp3"
wait_for 300 "local transcript" test -s "$data/outbox/weather.txt"
transcript=$(cat "$data/outbox/weather.txt")
echo "   transcript: $transcript"
for word in morning rain afternoon; do
  grep -qi "$word" <<<"$transcript" || fail "the local transcript lacks \"$word\""
done
log_has "$local_name" '"backend": "local"' || fail "the local engine was not used"
wait_for 60 "local container healthy" healthy "$local_name"
echo "   health: healthy"
check_non_root "$local_name"
stop_within_grace "$local_name"

say "docker smoke test passed in $(($(date +%s) - started))s"
