# fetchfs as a mounter of the benchmark harnesses, with the persistent disk tier on
# ([cache] dir + disk): the way users run it beside httpdirfs --cache and rclone's full VFS cache.
FETCHFS_MOUNTER_NAME=${FETCHFS_MOUNTER_NAME:-fetchfs-disk}
FETCHFS_DISK=${FETCHFS_DISK:-4GiB}
source "$(dirname "${BASH_SOURCE[0]}")/fetchfs.sh"
# shellcheck disable=SC2206
mounter_argv() {
  MOUNT_ARGV=("$FETCHFS_BIN" mount --foreground --log-level warn --cache-dir "$FETCHFS_CACHE"
              --disk-cache "$FETCHFS_DISK" ${FETCHFS_ARGS:-} "$2" "$1")
}
