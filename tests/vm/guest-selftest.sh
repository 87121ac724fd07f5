# Run inside the guest by tests/vm/selftest, with busybox sh:
#   busybox sh tests/vm/guest-selftest.sh BUSYBOX
# Each step proves one kernel facility Berth's jails rely on and prints
# "ok NAME" or "FAIL NAME: why"; the last line counts them. Exit 0 only if
# every step passed. Every resource is created here, in a guest that is
# thrown away afterwards, and removed anyway.

BB=$1
[ -x "$BB" ] || { echo "FAIL setup: busybox '$BB' is not executable"; exit 1; }
mkdir -p /tmp/bb && "$BB" --install -s /tmp/bb || { echo "FAIL setup: busybox --install"; exit 1; }
PATH=/tmp/bb:$PATH
CG=/sys/fs/cgroup
passed=0
failed=0

ok() {
	echo "ok $1"
	passed=$((passed + 1))
}
fail() {
	echo "FAIL $1: $2"
	failed=$((failed + 1))
}
# field FILE KEY: the value of "KEY value" in a flat-keyed cgroup file.
field() { sed -n "s/^$2 //p" "$1"; }
# cg_remove DIR: kill what is left in a cgroup, wait until it is empty,
# remove it.
cg_remove() {
	echo 1 >"$1/cgroup.kill"
	i=0
	while [ -n "$(cat "$1/cgroup.procs")" ] && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	rmdir "$1"
}

# --- cgroup2 with the controllers Berth uses
t=cgroup2-controllers
fstype=$(awk '$2 == "/sys/fs/cgroup" { t = $3 } END { print t }' /proc/mounts)
if [ "$fstype" != cgroup2 ]; then
	fail $t "/sys/fs/cgroup is '$fstype', not cgroup2"
elif grep -qE '^[^ ]+ [^ ]+ cgroup ' /proc/mounts; then
	fail $t "a cgroup v1 hierarchy is mounted: $(grep -E '^[^ ]+ [^ ]+ cgroup ' /proc/mounts | head -n1)"
else
	missing=
	for c in memory pids cpu io; do
		grep -qw $c $CG/cgroup.subtree_control || missing="$missing $c"
	done
	if [ -n "$missing" ]; then
		fail $t "not enabled in cgroup.subtree_control:$missing ($(cat $CG/cgroup.subtree_control))"
	else
		ok "$t ($(cat $CG/cgroup.subtree_control))"
	fi
fi

# --- memory.max OOM-kills a hog; memory.events counts it
t=memory-oom
g=$CG/selftest-mem-$$
if mkdir $g; then
	echo 32M >$g/memory.max
	[ -f $g/memory.swap.max ] && echo 0 >$g/memory.swap.max
	# dd's 128 MiB buffer is filled from /dev/zero: far over the limit.
	sh -c "echo \$\$ >$g/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=128M count=1" 2>/dev/null
	rc=$?
	kills=$(field $g/memory.events oom_kill)
	if [ "$rc" -ne 137 ]; then
		fail $t "the hog exited $rc, not 137 (SIGKILL)"
	elif [ "${kills:-0}" -lt 1 ]; then
		fail $t "memory.events oom_kill is '${kills}'"
	else
		ok "$t (oom_kill $kills)"
	fi
	cg_remove $g || fail $t-cleanup "rmdir $g"
else
	fail $t "mkdir $g"
fi

# --- pids.max stops a fork loop
t=pids-max
g=$CG/selftest-pids-$$
if mkdir $g; then
	echo 5 >$g/pids.max
	# ash gives up at the first fork that fails ("can't fork").
	sh -c "echo \$\$ >$g/cgroup.procs || exit 99
		for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
			sleep 30 >/dev/null 2>&1 &
		done
		exit 0" >/dev/null 2>&1
	rc=$?
	current=$(cat $g/pids.current)
	hits=$(field $g/pids.events max)
	if [ "$rc" = 0 ]; then
		fail $t "20 forks all succeeded under pids.max 5 (pids.current $current)"
	elif [ "${hits:-0}" -lt 1 ]; then
		fail $t "pids.events max is '${hits}' (pids.current $current)"
	elif [ "$current" -gt 5 ]; then
		fail $t "pids.current $current is over pids.max 5"
	else
		ok "$t (pids.events max $hits, pids.current $current)"
	fi
	cg_remove $g || fail $t-cleanup "rmdir $g"
else
	fail $t "mkdir $g"
fi

# --- cpu.max throttles a busy loop
t=cpu-max
g=$CG/selftest-cpu-$$
if mkdir $g; then
	echo "10000 100000" >$g/cpu.max
	sh -c "echo \$\$ >$g/cgroup.procs && exec timeout 1 sh -c 'while :; do :; done'" 2>/dev/null
	throttled=$(field $g/cpu.stat nr_throttled)
	if [ "$(cat $g/cpu.max)" != "10000 100000" ]; then
		fail $t "cpu.max reads '$(cat $g/cpu.max)'"
	elif [ "${throttled:-0}" -lt 1 ]; then
		fail $t "cpu.stat nr_throttled is '${throttled}'"
	else
		ok "$t (nr_throttled $throttled)"
	fi
	cg_remove $g || fail $t-cleanup "rmdir $g"
else
	fail $t "mkdir $g"
fi

# --- io: the controller's files are there (the guest has no block device
# to throttle)
t=io-controller
g=$CG/selftest-io-$$
if mkdir $g; then
	if [ -f $g/io.max ] && [ -f $g/io.stat ]; then
		ok $t
	else
		fail $t "no io.max/io.stat in $g"
	fi
	cg_remove $g || fail $t-cleanup "rmdir $g"
else
	fail $t "mkdir $g"
fi

# --- overlayfs
t=overlayfs
o=/tmp/selftest-ovl-$$
mkdir -p $o/lower $o/upper $o/work $o/merged
echo lower >$o/lower/a
if mount -t overlay overlay -o lowerdir=$o/lower,upperdir=$o/upper,workdir=$o/work $o/merged; then
	echo upper >$o/merged/b
	if [ "$(cat $o/merged/a)" = lower ] && [ "$(cat $o/upper/b)" = upper ] && [ ! -e $o/lower/b ]; then
		ok $t
	else
		fail $t "merged view or copy-up is wrong"
	fi
	umount $o/merged || fail $t-cleanup "umount $o/merged"
else
	fail $t "mount -t overlay failed"
fi
rm -rf $o

# --- veth pair and a bridge (busybox ip cannot add a veth: iproute2's ip
# from the host root, when it has one)
t=veth-bridge
ip=ip
for c in /usr/sbin/ip /sbin/ip /usr/bin/ip /bin/ip; do
	[ -x $c ] && ip=$c && break
done
v=sv$$a
p=sv$$b
br=sbr$$
if $ip link add $v type veth peer name $p && $ip link add $br type bridge &&
	$ip link set $v master $br && $ip link set $br up && $ip link set $v up && $ip link set $p up; then
	if [ -e /sys/class/net/$br/brif/$v ] && [ -e /sys/class/net/$p ]; then
		ok $t
	else
		fail $t "$v is not a port of $br"
	fi
else
	fail $t "ip link add/set failed"
fi
$ip link del $v 2>/dev/null
$ip link del $br 2>/dev/null

# --- nftables NAT (with the host's nft, when it has one)
t=nftables-nat
if command -v nft >/dev/null 2>&1; then
	tb=selftest$$
	if nft add table ip $tb && nft add chain ip $tb post '{ type nat hook postrouting priority 100; }' &&
		nft add rule ip $tb post oifname lo masquerade; then
		ok $t
	else
		fail $t "nft could not add a masquerade rule"
	fi
	nft delete table ip $tb 2>/dev/null
else
	echo "skip $t: no nft on the host root"
fi

# --- user namespace
t=userns
m=$(unshare -U -r cat /proc/self/uid_map 2>&1)
set -- $m
if [ "$1" = 0 ] && [ "$2" = 0 ]; then
	ok "$t (uid_map: $m)"
else
	fail $t "unshare -U -r: '$m'"
fi

# --- seccomp is there
t=seccomp
if grep -q '^Seccomp:' /proc/self/status && [ -f /proc/sys/kernel/seccomp/actions_avail ]; then
	ok "$t ($(cat /proc/sys/kernel/seccomp/actions_avail))"
else
	fail $t "no seccomp in this kernel"
fi

echo "guest: $passed passed, $failed failed"
[ "$failed" = 0 ]
