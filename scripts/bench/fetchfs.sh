# fetchfs as a mounter of the shared benchmark harness (sourced by its run.sh).
# Plain-HTTP source in the foreground, default settings unless FETCHFS_ARGS says otherwise.
MOUNTER_NAME=${FETCHFS_MOUNTER_NAME:-fetchfs}
FETCHFS_BIN=${FETCHFS_BIN:-$PWD/target/release/fetchfs}
FETCHFS_CACHE=${FETCHFS_CACHE:-/tmp/bench/cache/$MOUNTER_NAME}
mounter_version() { echo "fetchfs: $("$FETCHFS_BIN" --version 2>&1 | head -1)"; }
mounter_prepare() { rm -rf "$FETCHFS_CACHE"; mkdir -p "$FETCHFS_CACHE"; }
# shellcheck disable=SC2206
mounter_argv() { MOUNT_ARGV=("$FETCHFS_BIN" mount --foreground --log-level warn ${FETCHFS_ARGS:-} "$2" "$1"); }
mounter_cleanup() { rm -rf "$FETCHFS_CACHE"; }
