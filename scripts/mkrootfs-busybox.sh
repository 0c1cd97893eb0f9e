#!/usr/bin/env bash
# Builds a minimal rootfs from Debian's busybox-static into DIR: /bin/busybox, a symlink per
# applet, /etc/passwd and /etc/group, and the usual empty mountpoints. Nothing binary is committed.
set -euo pipefail
dir=${1:?usage: mkrootfs-busybox.sh DIR}
bb=/bin/busybox
# ldd fails on a static binary: that is what we want.
if [ ! -x "$bb" ] || ! "$bb" --list >/dev/null 2>&1 || ldd "$bb" >/dev/null 2>&1; then
  echo "mkrootfs-busybox.sh: need a static busybox at $bb (apt-get install busybox-static)" >&2
  exit 1
fi
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,proc,dev,sys,tmp,root,home,var,run}
cp "$bb" "$tmp/bin/busybox"
for app in $("$tmp/bin/busybox" --list-full); do
  [ "$app" = bin/busybox ] && continue
  ln -sf /bin/busybox "$tmp/$app"
done
cat > "$tmp/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
tool:x:1000:1000:tool:/home/tool:/bin/sh
P
cat > "$tmp/etc/group" <<'G'
root:x:0:
daemon:x:1:
users:x:100:tool
nogroup:x:65534:
tool:x:1000:
G
chmod 1777 "$tmp/tmp"
chmod 755 "$tmp"
rm -rf "$dir"
mv "$tmp" "$dir"
