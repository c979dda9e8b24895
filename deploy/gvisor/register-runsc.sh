#!/usr/bin/env bash
# Register gVisor's runsc as the Docker runtime "runsc", the way enclave-tools needs it:
# merges one entry into /etc/docker/daemon.json (every other key kept), makes dockerd
# reload its configuration with SIGHUP (no restart: running containers stay up), and waits
# until `docker info` lists the runtime. Idempotent: run it again and it changes nothing.
#
#   deploy/gvisor/register-runsc.sh            # runsc must already be installed
#   deploy/gvisor/register-runsc.sh --install  # apt-get install runsc first if missing
#
# Environment: RUNSC (path, default /usr/bin/runsc), DAEMON_JSON (default
# /etc/docker/daemon.json), RUNSC_PLATFORM (default ptrace), RUNSC_NETWORK (default none).
#
# The runtime arguments, and why (measured with Debian's runsc 0.0~20221219):
#   --platform=ptrace  works in any VM (no /dev/kvm needed); the default of that release,
#                      named so a reader sees it. gVisor 2023+ releases default to systrap
#                      (faster; ptrace is deprecated there): RUNSC_PLATFORM=systrap.
#   --host-uds=all     lets the gateway inside bind its unix socket on the bind-mounted
#                      directory so that the host can connect to it. "create" alone binds
#                      the socket but the sandbox can then neither stat nor chmod it (EPERM:
#                      the gofer must open the host socket to do that), and the gateway's
#                      chmod fails. "all" also lets sandboxed code connect to host sockets
#                      visible in its mounts: here only its own gateway socket is (the image,
#                      the socket directory and /etc/hosts-like files are its only host
#                      mounts; /tmp, /workspace and the rest are tmpfs inside gVisor).
#   --network=none     no network stack at all (RUNSC_NETWORK=sandbox for gVisor's own
#                      netstack). Needed where dockerd itself runs inside a container, as
#                      here: runsc's netstack refuses to start ("cannot run with network
#                      enabled in root network namespace"). A sandbox then has no network
#                      whatever its `network` setting: no egress, and transport="tcp" cannot
#                      work (the default, network="none" over the unix socket, is unaffected).
set -euo pipefail

RUNSC=${RUNSC:-/usr/bin/runsc}
DAEMON_JSON=${DAEMON_JSON:-/etc/docker/daemon.json}
PLATFORM=${RUNSC_PLATFORM:-ptrace}
NETWORK=${RUNSC_NETWORK:-none}
install=0
case "${1:-}" in
  --install) install=1 ;;
  "") ;;
  *) echo "usage: $0 [--install]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "register-runsc: needs root; re-running with sudo"
  exec sudo --preserve-env=RUNSC,DAEMON_JSON,RUNSC_PLATFORM,RUNSC_NETWORK "$0" "$@"
fi

if [ ! -x "$RUNSC" ]; then
  if [ "$install" = 1 ]; then
    echo "register-runsc: $RUNSC missing: apt-get install runsc"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
  fi
  [ -x "$RUNSC" ] || { echo "register-runsc: no runsc at $RUNSC (install Debian's 'runsc', or pass --install)" >&2; exit 1; }
fi
echo "register-runsc: using $("$RUNSC" --version 2>/dev/null | head -1) at $RUNSC"

# Merge {"runtimes": {"runsc": {...}}} into daemon.json; print whether it changed.
changed=$(python3 - "$DAEMON_JSON" "$RUNSC" "$PLATFORM" "$NETWORK" <<'PY'
import json, os, sys

path, runsc, platform, network = sys.argv[1:5]
entry = {"path": runsc, "runtimeArgs": ["--platform=" + platform, "--host-uds=all", "--network=" + network]}
try:
    with open(path) as handle:
        config = json.load(handle)
except FileNotFoundError:
    config = {}
if not isinstance(config, dict):
    sys.exit(f"{path} does not hold a JSON object")
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == entry:
    print("no")
    sys.exit(0)
runtimes["runsc"] = entry
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = path + ".register-runsc"
with open(tmp, "w") as handle:
    json.dump(config, handle, indent=2)
    handle.write("\n")
if os.path.exists(path):
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
os.replace(tmp, path)
print("yes")
PY
)

# Whether dockerd has loaded the runsc entry that daemon.json now holds (arguments included).
listed() {
  docker info --format '{{json .Runtimes}}' 2>/dev/null | python3 -c '
import json, sys
loaded = json.load(sys.stdin).get("runsc") or {}
wanted = json.load(open(sys.argv[1]))["runtimes"]["runsc"]
sys.exit(0 if loaded.get("path") == wanted["path"] and loaded.get("runtimeArgs") == wanted["runtimeArgs"] else 1)
' "$DAEMON_JSON"
}

if [ "$changed" = yes ]; then
  echo "register-runsc: wrote the runsc runtime into $DAEMON_JSON"
elif listed; then
  echo "register-runsc: runsc already registered in $DAEMON_JSON and loaded by dockerd"
  exit 0
fi

pids=$(pidof dockerd || true)
[ -n "$pids" ] || { echo "register-runsc: dockerd is not running; it will read $DAEMON_JSON when it starts" >&2; exit 1; }
echo "register-runsc: SIGHUP to dockerd ($pids) to reload its configuration"
kill -HUP $pids
for _ in $(seq 1 30); do
  if listed; then echo "register-runsc: docker info lists runsc with these arguments"; exit 0; fi
  sleep 1
done
echo "register-runsc: dockerd did not list runsc within 30 s after the reload (see its log)" >&2
exit 1
