#!/usr/bin/env bash
# examples/backup.sh — full and incremental backups of a running disk, and a restore, with QEMU
# 7.2's commands (the same on vmm and qemu-storage-daemon) and standard tools: `vmm qmp --script`
# (examples/backup-start.qmp, backup-stop.qmp), nbdinfo, nbdcopy, nbdsh, qemu-nbd, qemu-img.
#
#   examples/backup.sh demo [--daemon vmm|qsd] [--size MIB] [--keep] [--transient] [--no-transaction]
#       starts a daemon serving a qcow2 disk that a writer keeps writing to (over NBD), takes a
#       full backup, an incremental one (and a reference copy of the same instant), restores
#       the chain and checks restored == reference byte for byte
#   examples/backup.sh full --qmp SOCK --dir DIR [--node disk0] [--nbd-socket SOCK]
#                      [--transient] [--no-transaction]
#   examples/backup.sh incremental --qmp SOCK --dir DIR [--node disk0] [--nbd-socket SOCK]
#                      [--reference FILE] [--transient] [--no-transaction]
#   examples/backup.sh restore --dir DIR --output FILE [--format raw|qcow2]
#
# full: a bitmap b0 (persistent on qcow2) is added in the same transaction that starts the
# point-in-time view; the view is copied whole (nbdcopy) to DIR/full.qcow2. incremental: b<N>
# is added and the previous bitmap disabled in that transaction; the view is exported with the
# previous bitmap, and only the extents it reports dirty (nbdinfo --map=qemu:dirty-bitmap:...)
# are copied into DIR/inc<N>.qcow2 (backing: the previous image); then the previous bitmap is
# removed. The bitmaps are persistent on a qcow2 disk (stored in the image, they survive a
# restart), in memory only on other formats or with --transient. --no-transaction: the bitmap
# actions and blockdev-backup as separate commands, in an order that is still correct (each
# bitmap reports a superset), for a daemon whose transaction lacks an action. --reference
# copies the whole view too (for checking). --nbd-socket: the daemon's NBD server (unix);
# without it the script starts one on DIR/nbd.sock and stops it afterwards.
# Needs: qemu-utils, libnbd-bin, python3-libnbd; qemu-system-common for qsd. See docs/backup.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EX=$ROOT/examples
read -ra VMM <<<"${VMM_CMD:-$ROOT/vmm}"

say() { echo "[backup] $*"; }
die() { echo "backup.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d'  | sed 's/^# \{0,1\}//'; }

CMD=${1:-}; [[ $# -gt 0 ]] && shift
DAEMON=vmm SIZE_MIB=256 KEEP=0 TRANSIENT=0 NO_TRANSACTION=0 QMP="" DIR="" NODE=disk0 NBD_SOCK="" REFERENCE="" OUTPUT="" FORMAT=raw
while [[ $# -gt 0 ]]; do
    case "$1" in
        --daemon) DAEMON=${2:?}; shift 2 ;;
        --size) SIZE_MIB=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --transient) TRANSIENT=1; shift ;;
        --no-transaction) NO_TRANSACTION=1; shift ;;
        --qmp) QMP=${2:?}; shift 2 ;;
        --dir) DIR=${2:?}; shift 2 ;;
        --node) NODE=${2:?}; shift 2 ;;
        --nbd-socket) NBD_SOCK=${2:?}; shift 2 ;;
        --reference) REFERENCE=${2:?}; shift 2 ;;
        --output) OUTPUT=${2:?}; shift 2 ;;
        --format) FORMAT=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done
for t in qemu-img qemu-nbd nbdinfo nbdcopy nbdsh python3; do command -v $t >/dev/null || die "$t not found (apt-get install qemu-utils libnbd-bin python3-libnbd)"; done

# nbdsh runs "python3": the one first on PATH may lack libnbd's module (a pyenv, a venv).
NBDSH=(nbdsh)
if ! python3 -c 'import nbd' 2>/dev/null && /usr/bin/python3 -c 'import nbd' 2>/dev/null; then NBDSH=(env PATH="/usr/bin:$PATH" nbdsh); fi

# QMP: one command (its JSON reply on stdout), or a script (the replies, without the events, on
# stdout; everything in DIR/qmp.log).
qmp() { "${VMM[@]}" qmp --socket "$QMP" "$@"; }
qmp_script() {
    local out rc=0
    out=$("${VMM[@]}" qmp --socket "$QMP" --script "$1" 2>&1) || rc=$?
    printf '%s\n' "$out" >>"$DIR/qmp.log"
    printf '%s\n' "$out" | grep -v '^{"\(timestamp\|event\)"' | grep -v '^{"summary"' | sed 's/^/  /' || true
    return $rc
}
node_field() { # KEY [KEY...]: a field of $NODE in query-named-block-nodes ("" if none)
    qmp query-named-block-nodes flat=true | python3 -c '
import json, sys
for n in json.load(sys.stdin)["return"]:
    if n["node-name"] == sys.argv[1]:
        v = n
        for k in sys.argv[2:]:
            v = v[k]
        print(v)' "$NODE" "$@" 2>/dev/null || true
}
check_monitor() { qmp query-version >/dev/null || die "no QMP monitor answers at $QMP"; }
actual_size() { qemu-img info --output=json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["actual-size"])'; }

SCRATCH="" FLEECE=fleece-$$ EXPORT=backup STARTED=0 STARTING=0 OWN_NBD=0
ROLLBACK="" CLEANUP=""   # shell code run on exit: ROLLBACK undoes a failed backup, CLEANUP ends the demo
trap 'rc=$?; [[ -z $ROLLBACK ]] || eval "$ROLLBACK"; [[ -z $CLEANUP ]] || eval "$CLEANUP"; exit $rc' EXIT
URI() { echo "nbd+unix:///$EXPORT?socket=$NBD_SOCK"; }

start_view() { # SIZE NEW-BITMAP PERSISTENT OLD-BITMAP|"": the point-in-time view, exported read-only
    local size=$1 new=$2 persistent=$3 old=$4 actions bitmaps='[]'
    if [[ -z $NBD_SOCK ]]; then
        NBD_SOCK=$DIR/nbd.sock; OWN_NBD=1
        qmp nbd-server-start addr.type=unix addr.data.path="$NBD_SOCK" >/dev/null
    fi
    SCRATCH=$DIR/scratch.qcow2
    rm -f "$SCRATCH"
    qemu-img create -q -f qcow2 "$SCRATCH" "$size"
    actions="{\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"$NODE\",\"name\":\"$new\",\"persistent\":$persistent}},"
    if [[ -n $old ]]; then
        actions+="{\"type\":\"block-dirty-bitmap-disable\",\"data\":{\"node\":\"$NODE\",\"name\":\"$old\"}},"
        bitmaps="[\"$old\"]"
    fi
    local script=$EX/backup-start.qmp
    if [[ $NO_TRANSACTION == 1 ]]; then
        # The same steps one by one, in an order that stays correct without atomicity: the new
        # bitmap starts before the view's instant and the old one stops after it, so each
        # reports a superset of what changed (some extents are copied twice, none is missed).
        script=$DIR/backup-start-steps.qmp
        {
            echo "blockdev-add driver=qcow2 node-name=$FLEECE file.driver=file file.filename=$SCRATCH backing=$NODE discard=unmap"
            echo "block-dirty-bitmap-add node=$NODE name=$new persistent=$persistent"
            echo "blockdev-backup job-id=$FLEECE device=$NODE target=$FLEECE sync=none"
            [[ -z $old ]] || echo "block-dirty-bitmap-disable node=$NODE name=$old"
            echo "block-export-add type=nbd id=$FLEECE node-name=$FLEECE name=$EXPORT writable=false bitmaps=$bitmaps"
        } >"$script"
    fi
    say "point-in-time view of $NODE: $script"
    STARTING=1
    NODE=$NODE SCRATCH=$SCRATCH FLEECE=$FLEECE EXPORT=$EXPORT ACTIONS=$actions BITMAPS=$bitmaps \
        qmp_script "$script"
    STARTED=1 STARTING=0
}
stop_view() {
    if [[ $STARTED == 1 ]]; then
        STARTED=0
        say "tear down: $EX/backup-stop.qmp"
        FLEECE=$FLEECE qmp_script "$EX/backup-stop.qmp" || say "tear down failed (see $DIR/qmp.log)"
    elif [[ $STARTING == 1 ]]; then
        # backup-start.qmp stopped half way: undo what it did, whatever that was
        STARTING=0
        say "undoing a half-started view"
        qmp block-export-del id="$FLEECE" >/dev/null 2>&1 || true
        qmp block-job-cancel device="$FLEECE" >/dev/null 2>&1 && sleep 1
        qmp blockdev-del node-name="$FLEECE" >/dev/null 2>&1 || true
    else
        return 0
    fi
    rm -f "$SCRATCH"
    if [[ $OWN_NBD == 1 ]]; then qmp nbd-server-stop >/dev/null || true; OWN_NBD=0; NBD_SOCK=""; fi
}

# Copies the extents that the map (nbdinfo --map --json) reports dirty from the view to a qcow2
# image served by qemu-nbd; prints each extent.
copy_dirty() { # MAP.json IMAGE.qcow2
    "${NBDSH[@]}" -u "$(URI)" -c "
import json
dst = nbd.NBD()
dst.connect_systemd_socket_activation(['qemu-nbd', '-f', 'qcow2', '$2'])
total = 0
for e in json.load(open('$1')):
    if not e['type'] & 1:
        continue
    off, left = e['offset'], e['length']
    print('[backup]   copy %12d %10d' % (off, left))
    total += left
    while left:
        n = min(left, 4 << 20)
        dst.pwrite(h.pread(n, off), off)
        off += n
        left -= n
dst.flush()
dst.shutdown()
print('[backup] copied %d bytes in dirty extents' % total)
"
}

full() {
    [[ -n $QMP && -n $DIR ]] || die "full needs --qmp and --dir"
    mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
    [[ ! -e $DIR/chain ]] || die "$DIR already holds a backup chain; use a new --dir"
    local size drv persistent=false
    check_monitor
    size=$(node_field image virtual-size); drv=$(node_field drv)
    [[ -n $size ]] || die "no node '$NODE'"
    [[ $drv == qcow2 && $TRANSIENT == 0 ]] && persistent=true
    ROLLBACK='stop_view; qmp block-dirty-bitmap-remove node="$NODE" name=b0 >/dev/null 2>&1 || true'
    start_view "$size" b0 "$persistent" ""
    qemu-img create -q -f qcow2 "$DIR/full.qcow2" "$size"
    say "nbdcopy $(URI) -> $DIR/full.qcow2"
    nbdcopy "$(URI)" -- [ qemu-nbd -f qcow2 "$DIR/full.qcow2" ]
    stop_view
    ROLLBACK=""
    echo full.qcow2 >"$DIR/chain"; echo b0 >"$DIR/bitmap"
    say "full backup: $DIR/full.qcow2 ($(actual_size "$DIR/full.qcow2") bytes on disk); bitmap b0 on $NODE tracks what changes from now on"
}

incremental() {
    [[ -n $QMP && -n $DIR ]] || die "incremental needs --qmp and --dir"
    DIR=$(cd "$DIR" && pwd)
    [[ -s $DIR/chain && -s $DIR/bitmap ]] || die "$DIR holds no full backup"
    local size drv persistent=false old new n top image map
    check_monitor
    old=$(cat "$DIR/bitmap"); n=$(wc -l <"$DIR/chain"); new=b$n; top=$(tail -n 1 "$DIR/chain"); image=inc$n.qcow2; map=$DIR/inc$n.map.json
    size=$(node_field image virtual-size); drv=$(node_field drv)
    [[ $drv == qcow2 && $TRANSIENT == 0 ]] && persistent=true
    # On failure, the next incremental must still see every change since the last good backup:
    # the writes since this transaction are in the new bitmap; merge them back into the old one.
    ROLLBACK="stop_view; qmp block-dirty-bitmap-enable node=$NODE name=$old >/dev/null 2>&1 || true; \
        qmp block-dirty-bitmap-merge node=$NODE target=$old bitmaps='[\"$new\"]' >/dev/null 2>&1 || true; \
        qmp block-dirty-bitmap-remove node=$NODE name=$new >/dev/null 2>&1 || true; rm -f $DIR/$image"
    start_view "$size" "$new" "$persistent" "$old"
    say "nbdinfo --map=qemu:dirty-bitmap:$old $(URI)"
    nbdinfo --map="qemu:dirty-bitmap:$old" --json "$(URI)" >"$map"
    qemu-img create -q -f qcow2 -b "$top" -F qcow2 "$DIR/$image" "$size"
    say "copying the dirty extents into $DIR/$image (backing $top)"
    copy_dirty "$map" "$DIR/$image"
    if [[ -n $REFERENCE ]]; then
        say "reference: nbdcopy $(URI) -> $REFERENCE (the whole view)"
        nbdcopy "$(URI)" "$REFERENCE"
    fi
    stop_view
    ROLLBACK=""
    qmp block-dirty-bitmap-remove node="$NODE" name="$old" >/dev/null
    echo "$image" >>"$DIR/chain"; echo "$new" >"$DIR/bitmap"
    say "incremental backup: $DIR/$image ($(actual_size "$DIR/$image") bytes on disk); $old removed, $new tracks what changes from now on"
}

restore() {
    [[ -n $DIR && -n $OUTPUT ]] || die "restore needs --dir and --output"
    [[ -s $DIR/chain ]] || die "$DIR holds no backup"
    local top; top=$DIR/$(tail -n 1 "$DIR/chain")
    say "restore: qemu-img convert -O $FORMAT $top $OUTPUT (chain: $(paste -sd' ' "$DIR/chain" | sed 's/ / <- /g'))"
    qemu-img convert -O "$FORMAT" "$top" "$OUTPUT"
}

demo() {
    command -v qemu-io >/dev/null || die "qemu-io not found"
    local writer
    pids=(); run=$(mktemp -d /tmp/vmm-backup.XXXXXX)
    DIR=$run/backups; mkdir -p "$DIR"; QMP=$run/qmp.sock; NBD_SOCK=$run/nbd.sock
    CLEANUP='touch "$run/stop-writer"; for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; [[ $KEEP == 1 ]] && echo "kept $run" || rm -rf "$run"'
    say "work folder $run; daemon: $DAEMON"
    qemu-img create -q -f qcow2 "$run/disk.qcow2" "${SIZE_MIB}M"
    qemu-io -f qcow2 -c "write -P 0xa5 0 $(( SIZE_MIB / 2 ))M" "$run/disk.qcow2" >/dev/null
    local cmd=()
    # qemu-storage-daemon 7.2 aborts when an NBD client leaves an export on an IOThread
    # (docs/guest-testing.md): its disk stays in the main loop.
    if [[ $DAEMON == qsd ]]; then cmd=(qemu-storage-daemon); else cmd=("${VMM[@]}" serve --object iothread,id=iot0); fi
    local iot=""; [[ $DAEMON == vmm ]] && iot=",iothread=iot0"
    "${cmd[@]}" --blockdev driver=file,node-name=disk0-file,filename="$run/disk.qcow2" \
        --blockdev driver=qcow2,node-name=disk0,file=disk0-file \
        --nbd-server addr.type=unix,addr.path="$NBD_SOCK" \
        --export type=nbd,id=nbd0,node-name=disk0,name=disk0,writable=on$iot \
        --chardev socket,id=m0,path="$QMP",server=on,wait=off --monitor chardev=m0 \
        --pidfile "$run/daemon.pid" >"$run/daemon.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do [[ -s $run/daemon.pid ]] && break; kill -0 "${pids[0]}" 2>/dev/null || break; sleep 0.1; done
    [[ -s $run/daemon.pid ]] || { cat "$run/daemon.log" >&2; die "the daemon did not start"; }
    local disk="nbd+unix:///disk0?socket=$NBD_SOCK"
    say "$DAEMON serves disk0 (qcow2, $SIZE_MIB MiB) at $disk"
    # The writer: 64 KiB writes with a new pattern every 50 ms through the daemon, all along.
    (
        i=0
        while [[ ! -e $run/stop-writer ]]; do
            qemu-io -f raw -c "write -P $(( i % 200 + 1 )) $(( (i * 7919) % (SIZE_MIB * 16) * 65536 )) 64k" "$disk" >/dev/null 2>>"$run/writer.err" \
                || echo "write $i failed" >>"$run/writer.err"
            i=$((i + 1)); sleep 0.05
        done
        echo "$i" >"$run/writer.count"
    ) &
    writer=$!; pids+=($writer)
    sleep 1
    full
    sleep 2
    REFERENCE=$run/reference.raw
    incremental
    sleep 1
    touch "$run/stop-writer"; wait $writer
    say "the writer made $(cat "$run/writer.count") writes; failed: $(grep -c failed "$run/writer.err" || true)"
    OUTPUT=$run/restored.raw FORMAT=raw
    restore
    qemu-img compare -f raw -F raw "$run/restored.raw" "$run/reference.raw" >/dev/null \
        && say "restored == the disk at the incremental backup's instant: identical" \
        || die "the restored image differs from the reference"
    if qemu-img compare -q -f raw -F raw "$disk" "$run/restored.raw"; then say "the live disk still equals it (no write since)"
    else say "the live disk differs from it: the writer kept writing after the backup"; fi
    [[ ! -s $run/writer.err ]] || { cat "$run/writer.err" >&2; die "the writer saw errors"; }
}

case "$CMD" in
    full) full ;;
    incremental) incremental ;;
    restore) restore ;;
    demo) demo ;;
    -h|--help|"") usage; [[ -n $CMD ]] ;;
    *) die "unknown command '$CMD' (demo, full, incremental, restore)" ;;
esac
