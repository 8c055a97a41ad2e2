#!/usr/bin/env bash
# bench_mpi under a bandwidth limit: two ranks in two network namespaces joined
# by a veth pair, each end shaped with tc (a token bucket at RATE), launched by
# mpirun through `ip netns exec` instead of ssh. Checks the cost model's
# communication term (docs/scaling.md) against measured step times.
# Usage: bash bench/mpi_netns.sh [RATE ...]   (tc rates, e.g. 200mbit 1gbit; default: 100mbit 400mbit)
# Needs root (namespaces, tc) and OpenMPI; env XC_BENCH_QUICK=1 for the small shape.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "mpi_netns: needs root (ip netns, tc): not run" >&2; exit 0; }
command -v mpirun >/dev/null && command -v tc >/dev/null && command -v ip >/dev/null ||
  { echo "mpi_netns: needs mpirun (openmpi-bin), ip and tc (iproute2): not run" >&2; exit 0; }
[ $# -gt 0 ] || set -- 100mbit 400mbit
N1=xcb$$a N2=xcb$$b V1=xv$$a V2=xv$$b A1=10.231.$(( $$ % 250 )).1 A2=10.231.$(( $$ % 250 )).2
AGENT=$(mktemp /tmp/xc_nsagent.XXXXXX)
cleanup() { ip netns del "$N1" 2>/dev/null || true; ip netns del "$N2" 2>/dev/null || true; rm -f "$AGENT"; }
trap cleanup EXIT
ip netns add "$N1"; ip netns add "$N2"
ip link add "$V1" type veth peer name "$V2"
ip link set "$V1" netns "$N1"; ip link set "$V2" netns "$N2"
ip -n "$N1" addr add "$A1/24" dev "$V1"; ip -n "$N2" addr add "$A2/24" dev "$V2"
for ns in "$N1" "$N2"; do ip -n "$ns" link set lo up; done
ip -n "$N1" link set "$V1" up; ip -n "$N2" link set "$V2" up
# mpirun starts its remote daemon with `AGENT HOST COMMAND`: run it in HOST's namespace
cat >"$AGENT" <<EOS
#!/bin/sh
host=\$1; shift
case \$host in $A1) ns=$N1 ;; $A2) ns=$N2 ;; *) echo "unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec \$ns sh -c "\$*"
EOS
chmod +x "$AGENT"
NET="--mca btl tcp,self --mca btl_tcp_if_include $A1/24 --mca oob_tcp_if_include $A1/24"
export XC_MPIRUN="ip netns exec $N1 mpirun --allow-run-as-root --mca plm_rsh_agent $AGENT -H $A1,$A2 $NET"
for rate in none "$@"; do
  if [ "$rate" != none ]; then
    ip netns exec "$N1" tc qdisc replace dev "$V1" root tbf rate "$rate" burst 512kb latency 100ms
    ip netns exec "$N2" tc qdisc replace dev "$V2" root tbf rate "$rate" burst 512kb latency 100ms
  fi
  echo "# link: ${rate} (veth between namespaces $N1 and $N2)" >&2
  out=$(build/bench/bench_mpi 2>/dev/null | tail -1)
  echo "{\"link\":\"$rate\",${out#\{}"
done
