#!/usr/bin/env bash
# Installs Debian's Slurm and munge, starts a single-node cluster on this machine (munged,
# slurmctld, slurmd; config and state under a scratch dir), waits until the node is idle, runs a
# smoke job, and prints the environment the Slurm tests need. Idempotent: a healthy cluster that
# is already running is reused.
#
#   eval "$(scripts/ci-slurm.sh)"               # exports SLURM_CONF and CRT_TEST_SLURM=1
#   cargo test -p crt-server --test slurm_adapter
#
# Needs root (apt-get, the daemons). Everything it says goes to stderr except the final `export`
# lines. CRT_SLURM_DIR picks the scratch dir (default /var/tmp/crt-slurm).
set -euo pipefail

DIR=${CRT_SLURM_DIR:-/var/tmp/crt-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

say() { echo "ci-slurm: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
  || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2
fi

# --- munge: the daemon refuses to run as root, so it runs as its own user.
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
  say "munged already running"
else
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
      runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key >&2
    else
      dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  say "starting munged"
  # --force: a socket or pid file left behind by a dead munged does not stop it.
  runuser -u munge -- /usr/sbin/munged --force >&2
  for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { say "munged does not answer"; exit 1; }
fi

# --- slurm.conf (rewritten only when it changes; a change restarts the daemons).
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
MEM_MB=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
new_conf=$(
  cat <<EOF
# Written by scripts/ci-slurm.sh: a single-node test cluster.
ClusterName=crt-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MailProg=/bin/true
ReturnToService=2
KillWait=2
MinJobAge=300
SchedulerParameters=batch_sched_delay=0
# More concurrent jobs than cores, so parallel tests do not wait on each other.
SlurmdParameters=config_overrides
NodeName=$HOST CPUs=8 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  say "writing $CONF"
  printf '%s\n' "$new_conf" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  conf_changed=1
fi

# A daemon is running when its pid file names a live process with the right name.
running() {
  local pidfile=$DIR/$1.pid pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}
stop() {
  local pid
  running "$1" || return 0
  pid=$(cat "$DIR/$1.pid")
  say "stopping $1 ($pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

if [ "$conf_changed" = 1 ]; then
  stop slurmd
  stop slurmctld
fi

if running slurmctld; then
  say "slurmctld already running ($(cat "$DIR/slurmctld.pid"))"
else
  say "starting slurmctld"
  # -c: a fresh start, without jobs saved by an earlier run.
  slurmctld -c -f "$CONF" >&2
fi
if running slurmd; then
  say "slurmd already running ($(cat "$DIR/slurmd.pid"))"
else
  say "starting slurmd"
  slurmd -f "$CONF" >&2
fi

# --- Wait (with a deadline: client commands hang ~10 s while slurmctld is not up) for the node.
deadline=$(($(date +%s) + 30))
state=""
while :; do
  state=$(timeout 5 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle | mixed | allocated | completing) break ;;
    drain* | down*)
      # ReturnToService=2 brings a node back once slurmd registers; an old admin drain does not.
      timeout 5 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
      ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    say "node $HOST not ready after 30 s (state '${state:-no answer}'); logs in $DIR/log"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
  fi
  sleep 0.3
done
say "node $HOST is $state ($(elapsed))"

# --- Smoke job.
if ! out=$(cd "$DIR" && timeout 60 sbatch --wait --quiet -J crt-smoke -o /dev/null --wrap true 2>&1); then
  say "smoke job failed: $out"
  exit 1
fi
say "smoke job ok; ready in $(elapsed)"

echo "export SLURM_CONF=$CONF"
echo "export CRT_TEST_SLURM=1"
