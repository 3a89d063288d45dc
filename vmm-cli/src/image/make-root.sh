#!/bin/sh
# make-root.sh OUT JDK LIBS: the base layer of vmm's OCI image, built here because no base image can be
# pulled (the build reaches Maven Central, not a container registry). OUT gets a jlink'ed Java
# runtime in /opt/java, the shared libraries it links taken from this machine (glibc, zlib, at
# their own paths, with the dynamic loader), and an empty /tmp (Netty and JNA unpack their
# native libraries there). Jib adds it to a scratch image as an extra directory.
set -eu
out=$1
jdk=$2
libs=$3
# jdeps --print-module-deps on vmm and its libraries, plus jdk.crypto.ec (TLS key exchange,
# loaded as a service, so jdeps does not see it)
modules=java.base,java.desktop,java.logging,java.management,java.naming,jdk.httpserver,jdk.jfr,jdk.management,jdk.unsupported,jdk.crypto.ec
rm -rf "$out"
mkdir -p "$out/opt" "$out/tmp"
: > "$out/tmp/.keep"
"$jdk/bin/jlink" --add-modules "$modules" --output "$out/opt/java" \
  --strip-debug --no-header-files --no-man-pages --compress=2
# Libraries of AWT's X11, sound and font parts are left out: a headless server never loads them.
find "$out/opt/java" -type f \( -name '*.so' -o -path '*/bin/*' -o -name jspawnhelper \) \
  ! -name libawt_xawt.so ! -name libsplashscreen.so ! -name libjsound.so ! -name libfontmanager.so \
  ! -name libjawt.so ! -name liblcms.so ! -name libjavajpeg.so | while read -r f; do
  ldd "$f" 2>/dev/null || true
done > "$out.ldd"
# The native libraries inside vmm's jars (Netty epoll and io_uring, BoringSSL, JNA) are unpacked
# to /tmp at run time; they link glibc's libdl, libpthread, ...: list what they need too.
natives="$out.natives"
rm -rf "$natives"
mkdir -p "$natives"
for j in "$libs"/*.jar; do
  (cd "$natives" && "$jdk/bin/jar" xf "$j" META-INF/native com/sun/jna/linux-x86-64 2>/dev/null) || true
done
find "$natives" -name '*.so' | while read -r f; do ldd "$f" 2>/dev/null || true; done >> "$out.ldd"
rm -rf "$natives"
sed -n 's/.*=> \(\/[^ ]*\) (.*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' "$out.ldd" | sort -u | while read -r lib; do
  case "$lib" in "$out"/*) continue ;; esac
  cp -L --parents "$lib" "$out"
done
rm -f "$out.ldd"
[ -e "$out/lib64/ld-linux-x86-64.so.2" ] || { echo "make-root.sh: no dynamic loader copied" >&2; exit 1; }
