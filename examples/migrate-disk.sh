#!/usr/bin/env bash
# examples/migrate-disk.sh — a live disk moved from one daemon to another over NBD + TLS, on one
# machine: the source serves disk0 (NBD here; a guest over vhost-user works the same way, see
# GuestMigrationTest), a writer keeps writing to it through the source, and
# examples/migrate-disk.qmp (run by `vmm qmp --script`) mirrors it to the destination and pivots.
# Then the source's users read the destination's image: the script checks that byte for byte.
#
#   examples/migrate-disk.sh [--source vmm|qsd] [--destination vmm|qsd] [--size MIB] [--keep]
#
# Needs: qemu-utils (qemu-img, qemu-io), libnbd-bin (nbdinfo), openssl; qemu-system-common for qsd.
# docs/migration.md shows a run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOURCE=vmm DESTINATION=vmm SIZE_MIB=256 KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --source) SOURCE=${2:?}; shift 2 ;;
        --destination) DESTINATION=${2:?}; shift 2 ;;
        --size) SIZE_MIB=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "migrate-disk.sh: unknown option $1" >&2; exit 1 ;;
    esac
done
for t in qemu-img qemu-io nbdinfo openssl; do command -v $t >/dev/null || { echo "migrate-disk.sh: $t not found" >&2; exit 1; }; done
daemon() { if [[ $1 == qsd ]]; then echo qemu-storage-daemon; else echo "$ROOT/vmm serve"; fi; }

RUN=$(mktemp -d /tmp/vmm-migrate.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ $KEEP == 1 ]] && echo "kept $RUN" || rm -rf "$RUN"
}
trap cleanup EXIT
say() { echo "[migrate-disk] $*"; }

say "work folder $RUN; source: $SOURCE, destination: $DESTINATION"
# A throw-away PKI, laid out as QEMU's tls-creds-x509 expects it.
mkdir -p "$RUN/pki/server" "$RUN/pki/client"
(
    cd "$RUN/pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 1 -subj "/CN=migration CA" 2>/dev/null
    for who in server client; do
        openssl req -newkey rsa:2048 -nodes -keyout $who/$who-key.pem -out $who.csr -subj "/CN=$who" 2>/dev/null
        if [[ $who == server ]]; then printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >$who.ext
        else printf 'extendedKeyUsage=clientAuth\n' >$who.ext; fi
        openssl x509 -req -in $who.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile $who.ext -out $who/$who-cert.pem 2>/dev/null
        cp ca-cert.pem $who/
    done
)

qemu-img create -q -f raw "$RUN/a.img" "${SIZE_MIB}M"
qemu-io -f raw -c "write -P 0xa5 0 $(( SIZE_MIB / 2 ))M" "$RUN/a.img" >/dev/null
qemu-img create -q -f raw "$RUN/b.img" "${SIZE_MIB}M"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

start() { # NAME ARGS... ; waits for its pidfile
    local name=$1; shift
    "$@" --pidfile "$RUN/$name.pid" >"$RUN/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 600); do [[ -s $RUN/$name.pid ]] && return 0; kill -0 "${PIDS[-1]}" 2>/dev/null || break; sleep 0.1; done
    echo "migrate-disk.sh: $name did not start:" >&2; cat "$RUN/$name.log" >&2; exit 1
}
# shellcheck disable=SC2046
start destination $(daemon "$DESTINATION") \
    --object tls-creds-x509,id=tls0,dir="$RUN/pki/server",endpoint=server \
    --blockdev driver=file,node-name=target,filename="$RUN/b.img" \
    --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$PORT",tls-creds=tls0 \
    --chardev socket,id=m0,path="$RUN/dst-qmp.sock",server=on,wait=off --monitor chardev=m0
say "destination serves NBD with TLS on 127.0.0.1:$PORT (QMP $RUN/dst-qmp.sock)"
# shellcheck disable=SC2046
start source $(daemon "$SOURCE") \
    --object tls-creds-x509,id=tls0,dir="$RUN/pki/client",endpoint=client \
    --blockdev driver=file,node-name=disk0,filename="$RUN/a.img" \
    --nbd-server addr.type=unix,addr.path="$RUN/src-nbd.sock" \
    --export type=nbd,id=nbd0,node-name=disk0,name=disk0,writable=on \
    --chardev socket,id=m0,path="$RUN/src-qmp.sock",server=on,wait=off --monitor chardev=m0
SRC_URI="nbd+unix:///disk0?socket=$RUN/src-nbd.sock"
say "source serves disk0 ($SIZE_MIB MiB) at $SRC_URI"

# The writer: 1 MiB writes with a new pattern every 0.1 s, through the source, all along.
(
    i=0
    while [[ ! -e $RUN/stop-writer ]]; do
        qemu-io -f raw -c "write -P $(( i % 200 + 1 )) $(( (i * 7) % SIZE_MIB ))M 1M" "$SRC_URI" >/dev/null 2>>"$RUN/writer.err" || echo "write $i failed" >>"$RUN/writer.err"
        i=$((i + 1)); sleep 0.1
    done
    echo "$i" >"$RUN/writer.count"
) &
WRITER=$!
sleep 1

say "running examples/migrate-disk.qmp against the source"
RUN=$RUN PKI="$RUN/pki/client" DST_HOST=127.0.0.1 DST_PORT=$PORT \
    "$ROOT/vmm" qmp --socket "$RUN/src-qmp.sock" --script "$ROOT/examples/migrate-disk.qmp"
sleep 1
touch "$RUN/stop-writer"; wait $WRITER
say "the writer made $(cat "$RUN/writer.count") writes through the source; failed: $(grep -c failed "$RUN/writer.err" || true)"
# After the pivot the source's disk0 reads the destination's image.
qemu-img compare -f raw -F raw "$SRC_URI" "$RUN/b.img" && say "the source's disk0 now reads the destination's image: identical"
if qemu-img compare -q -f raw -F raw "$RUN/a.img" "$RUN/b.img"; then
    say "a.img equals b.img (no write after the pivot)"
else
    say "a.img differs from b.img: the writes after the pivot went to the destination only"
fi
[[ ! -s $RUN/writer.err ]] || { echo "migrate-disk.sh: the writer saw errors:" >&2; cat "$RUN/writer.err" >&2; exit 1; }
