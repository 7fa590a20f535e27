#!/usr/bin/env bash
# The slurm profile on a real, single-node SLURM cluster: brings up munge, MariaDB, slurmdbd, slurmctld and slurmd
# (Debian packages slurm-wlm, slurmdbd, mariadb-server, munge; everything bound to 127.0.0.1), runs the workflow's
# `all` target of .test/config.yaml through profiles/slurm (placeholders filled in for this cluster), prints the wall
# time, the jobs' sacct states and the number of MLflow runs, and stops the daemons again.
#
#   sudo apt-get install -y slurm-wlm slurmdbd mariadb-server munge     # once
#   tests/cluster/slurm_smoke.sh [WORKDIR]                              # as root; WORKDIR default: a new temp dir
#
# Needs root (the daemons run as root here) and the project's environment (`./run` made it, or PYTHON names an
# interpreter with the project installed). It is not part of .ci/run: it takes a few minutes and needs root. With
# SLURM_SMOKE_NO_DBD=1 it runs without slurmdbd and MariaDB (no accounting: the profile's squeue polling must cope).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${1:-$(mktemp -d -t avs-slurm-smoke.XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || { echo "slurm_smoke: no environment at $python (run ./run once, or set PYTHON)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "slurm_smoke: run as root (it starts the SLURM daemons)" >&2; exit 2; }
no_dbd="${SLURM_SMOKE_NO_DBD:-0}"
etc="$work/etc" spool="$work/spool" logs="$work/daemon-logs"
mkdir -p "$etc" "$spool/ctld" "$spool/d" "$logs"
export SLURM_CONF="$etc/slurm.conf"
pids=()

stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "${linked_conf:-}" ] || rm -f "$linked_conf"
}
trap stop EXIT

wait_for() {  # wait_for SECONDS COMMAND...: poll until the command succeeds
    local limit=$1; shift
    for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    echo "slurm_smoke: timed out waiting for: $*" >&2
    return 1
}

# munge: authentication between the SLURM daemons and commands
mkdir -p /run/munge
munge -n >/dev/null 2>&1 || munged --force
wait_for 10 munge -n

host=$(hostname -s)  # the daemons check that their configured host is this one; they listen on 127.0.0.1 only
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
if [ "$no_dbd" = 1 ]; then
    accounting="AccountingStorageType=accounting_storage/none"
fi
cat >"$SLURM_CONF" <<EOF
ClusterName=avsbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=300
$accounting
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
# The executor plugin's job steps (srun inside each batch job) start with the job's environment, not this shell's:
# they find the configuration at SLURM's default path only. Link it there while the cluster runs.
linked_conf=""
if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    linked_conf=/etc/slurm/slurm.conf
elif ! cmp -s /etc/slurm/slurm.conf "$SLURM_CONF"; then
    echo "slurm_smoke: /etc/slurm/slurm.conf exists and is not this script's; move it away first" >&2
    exit 2
fi
if [ "$no_dbd" != 1 ]; then
    # MariaDB on loopback, data under WORKDIR
    mariadb-install-db --user=mysql --datadir="$work/mysql" >"$logs/mysql-install.log" 2>&1
    chown -R mysql:mysql "$work/mysql"
    chmod 755 "$work"  # mktemp -d makes it 700; the mysql user must reach its data folder
    mariadbd --user=mysql --datadir="$work/mysql" --socket="$work/mysql/mysqld.sock" --bind-address=127.0.0.1 --port=3306 \
        --pid-file="$work/mysql/mysqld.pid" --log-error="$work/mysql/mysqld.log" &
    pids+=($!)
    wait_for 60 mysql --socket="$work/mysql/mysqld.sock" -u root -e "SELECT 1"
    mysql --socket="$work/mysql/mysqld.sock" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    cat >"$etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$logs/slurmdbd.log
PidFile=$work/slurmdbd.pid
EOF
    chmod 600 "$etc/slurmdbd.conf"
    slurmdbd -D >"$logs/slurmdbd.out" 2>&1 &
    pids+=($!)
    wait_for 60 sacctmgr -n list cluster
    sacctmgr -i add cluster avsbench >/dev/null
    sacctmgr -i add account avs Cluster=avsbench Description=smoke Organization=avs >/dev/null
    sacctmgr -i add user root Account=avs >/dev/null
fi

slurmctld -D -i >"$logs/slurmctld.out" 2>&1 &
pids+=($!)
wait_for 60 scontrol ping
slurmd -D -N localhost >"$logs/slurmd.out" 2>&1 &
pids+=($!)
wait_for 60 bash -c 'sinfo -h -o %T | grep -q idle'
sinfo

# A copy of the checkout with the profile's placeholders filled in for this cluster
copy="$work/repo"
rm -rf "$copy" && mkdir -p "$copy"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$copy/")
profile="$copy/profiles/slurm"
account="avs"
[ "$no_dbd" = 1 ] && sed -i '/slurm_account:/d' "$profile/config.yaml"
sed -i "s/REPLACE_ME_account/$account/; s/REPLACE_ME_cpu_partition/cpu/; s/REPLACE_ME_gpu_partition/gpu/" \
    "$profile/config.yaml" "$profile/partitions.yaml"
sed -i 's/^\( *max_gpu:\) 8 .*/\1 1/' "$profile/partitions.yaml"  # the gpu partition of this cluster has no GPU

cd "$copy"
export PATH="$(dirname "$python"):$PATH"
start=$(date +%s)
status=0
"$python" -m snakemake --workflow-profile profiles/slurm all --configfile .test/config.yaml >"$work/snakemake.log" 2>&1 \
    || status=$?
wall=$(( $(date +%s) - start ))
tail -n 5 "$work/snakemake.log"
echo "snakemake exit status: $status; wall time: ${wall} s"
if [ "$no_dbd" = 1 ]; then
    squeue -a -t all -o "%.10i %.24j %.9P %.10T" || true
else
    sacct -a -X -n -o JobID,JobName%40,Partition,AllocCPUS,State,Elapsed
    echo "sacct states: $(sacct -a -X -n -o State | sort | uniq -c | tr -s ' ' | paste -sd, -)"
fi
echo "SLURM logs kept: $(find .snakemake/slurm_logs -name '*.log' 2>/dev/null | wc -l)"
"$python" - <<'EOF'
from pathlib import Path

from mlflow import MlflowClient

client = MlflowClient(tracking_uri=f"sqlite:///{Path('results/mlflow.db').resolve()}")
experiment = client.get_experiment_by_name("avs-bench-smoke")
runs = client.search_runs([experiment.experiment_id], max_results=1000)
kinds = {}
for run in runs:
    kinds.setdefault(run.data.tags.get("avs.kind", "?"), []).append(run.info.run_name)
print(f"MLflow runs in avs-bench-smoke: {len(runs)}; " + "; ".join(f"{k}: {sorted(v)}" for k, v in sorted(kinds.items())))
EOF
exit "$status"
