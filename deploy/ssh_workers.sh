#!/usr/bin/env bash
# Start one `autoall study run` on each host over ssh, detached; it runs one worker per GPU
# of that host (--n-jobs defaults to the number of GPUs).
#
# Usage:
#   autoall study create STUDY_FILE        # once; --storage defaults to $AUTOALL_STORAGE
#   deploy/ssh_workers.sh STUDY_FILE host1 host2 ...
#
# Environment (read here, passed to every host):
#   AUTOALL_STORAGE      postgresql+psycopg2://autoall@db-host:5432/autoall; it goes to each
#                        host through ssh's stdin and reaches `autoall` as its environment, so
#                        it is on no command line (a password in ~/.pgpass is better still)
#   MLFLOW_TRACKING_URI  http://mlflow-host:5000
#   AUTOALL_DIR          the checkout on every host (same path), with .venv and STUDY_FILE
#                        [the current directory]
#   CHECKPOINT_DIR       mid-trial checkpoints on storage every host mounts
#                        [$AUTOALL_DIR/.autoall/checkpoints]
#
# Each worker logs to $AUTOALL_DIR/logs/autoall-<host>.log on its host and exits 0 once the
# study holds its target of finished trials. After a crash (a host, a worker, the database),
# run this script again with the same arguments: finished trials are kept, a killed worker's
# trial is rerun from its last checkpoint.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 STUDY_FILE HOST [HOST ...]" >&2
    exit 2
fi
study_file=$1
shift
: "${AUTOALL_STORAGE:?set AUTOALL_STORAGE to the study database URL (password in ~/.pgpass)}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the MLflow server, e.g. http://mlflow:5000}"
dir=${AUTOALL_DIR:-$PWD}
checkpoints=${CHECKPOINT_DIR:-$dir/.autoall/checkpoints}
for host in "$@"; do
    # the storage URL comes on stdin (read first), every argument is quoted for the remote
    # shell; nohup and </dev/null let the worker outlive the ssh session
    remote="IFS= read -r AUTOALL_STORAGE && export AUTOALL_STORAGE && "
    remote+=$(printf '%q ' cd "$dir")
    remote+="&& mkdir -p logs && . .venv/bin/activate && { "  # only the worker in the background
    remote+=$(printf '%q ' nohup autoall study run "$study_file" \
        --tracking-uri "$MLFLOW_TRACKING_URI" \
        --checkpoint-dir "$checkpoints")
    remote+="> $(printf '%q' "logs/autoall-$host.log") 2>&1 < /dev/null & }"
    echo "starting a worker on $host"
    printf '%s\n' "$AUTOALL_STORAGE" | ssh -o BatchMode=yes "$host" "$remote"
done
echo "started $# host(s); watch with: autoall study status $study_file"
