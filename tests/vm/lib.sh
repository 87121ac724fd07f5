# shellcheck shell=bash
# Shared by tests/vm/setup, tests/vm/run and tests/vm/selftest (sourced, bash).
#
# Where the cache lives, how to report, and the one file that tells `run`
# what `setup` built (vm.env in the cache).

BERTH_VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ -n "${BERTH_VM_CACHE:-}" ]; then
	CACHE=$BERTH_VM_CACHE
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
	CACHE=$XDG_CACHE_HOME/berth-vm
else
	CACHE=/var/cache/berth-vm
fi
# shellcheck disable=SC2034 # used by the scripts that source this
VM_ENV=$CACHE/vm.env

say() { printf 'berth-vm: %s\n' "$*" >&2; }
die() {
	printf 'berth-vm: error: %s\n' "$*" >&2
	exit "${DIE_STATUS:-1}"
}

# Single-quote a string for /bin/sh: ' becomes '\''.
shquote() {
	local s=${1//\'/\'\\\'\'}
	printf "'%s'" "$s"
}

# A hash of the scripts that shape the cache: when it differs from the one
# in vm.env, run calls setup again.
src_key() {
	cat "$BERTH_VM_DIR/init" "$BERTH_VM_DIR/setup" | sha256sum | cut -d' ' -f1
}
