#!/bin/sh
# Run a command inside a loopback-only network namespace (only 127.0.0.1 reachable) when this machine
# allows one (root, or unprivileged user namespaces); otherwise run it as it is. Used by `make test`
# so that nothing a test starts (Flower, Ray, Jupyter kernels) can send traffic beyond this machine.
if unshare -n sh -c 'ip link set lo up' 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
echo "note: no loopback-only namespace here (needs root or user namespaces); running without one" >&2
exec "$@"
