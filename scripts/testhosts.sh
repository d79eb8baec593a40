#!/usr/bin/env bash
# testhosts.sh - two "hosts" on this machine for migration tests. Host B is a
# network namespace joined to this one by a veth pair; host A is this
# machine's own network namespace, reached at its end of that pair. Each has
# its own sshd (Debian's openssh-server) that accepts one generated key for
# root and listens only on its end of the pair. Each sshd runs in
# a pid namespace and mount namespace (with its /proc) of its own, as on a
# second machine: what is restored there gets the pids it had, whatever runs
# elsewhere, and whatever is left there ends with the host.
#
#   bash scripts/testhosts.sh up DIR     create hosts A and B; state and keys in DIR
#   bash scripts/testhosts.sh down DIR   stop both sshd, remove namespaces and DIR
#
# `up` prints shell assignments: B_NS A_ADDR B_ADDR KEY SSH_OPTS.
# Addresses are 10.233.N.1 (A) and 10.233.N.2 (B), N from DIR, on the two
# ends of the veth pair only: the pair leads nowhere else, and nothing
# listens anywhere else. (Host A is this namespace because criu dumps a tree
# from the tree's own network namespace, or tries to dump that namespace.)
# Needs root, iproute2, openssh-server (sshd) and openssh-client (ssh).
set -euo pipefail

die() {
	printf 'testhosts: %s\n' "$*" >&2
	exit 1
}

cmd=${1:-}
dir=${2:-}
[[ ($cmd == up || $cmd == down) && -n $dir ]] || die "usage: $0 up|down DIR"
[[ $(id -u) == 0 ]] || die "must run as root"

# One suffix per DIR, so that runs side by side do not meet.
suffix=$(printf '%s' "$(realpath -m -- "$dir")" | cksum | awk '{ print $1 % 200 + 20 }')
B_NS=tsB$suffix A_LINK=tsa$suffix B_LINK=tsb$suffix
A_ADDR=10.233.$suffix.1 B_ADDR=10.233.$suffix.2

down() {
	local h holder
	for h in a b; do
		# A host's pid namespace ends with its holder (its init): the kernel
		# then kills everything left in it, sshd and restored trees alike.
		[[ -s $dir/$h/holder.pid ]] || continue
		holder=$(<"$dir/$h/holder.pid")
		if [[ -r /proc/$holder/cmdline ]] && tr '\0' ' ' <"/proc/$holder/cmdline" | grep -q -- "-f $dir/$h/sshd_config"; then
			kill -KILL "$holder" 2>/dev/null || true
			for _ in $(seq 100); do [[ -e /proc/$holder ]] || break; sleep 0.02; done
		fi
	done
	ip link del "$A_LINK" 2>/dev/null || true # takes its peer with it
	ip netns del "$B_NS" 2>/dev/null || true
	rm -rf -- "$dir"
}

if [[ $cmd == down ]]; then
	down
	exit 0
fi

command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || die "sshd not found: apt-get install openssh-server"
command -v ssh >/dev/null || die "ssh not found: apt-get install openssh-client"
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

[[ ! -e $dir ]] || die "$dir exists: take it down first ($0 down $dir)"
mkdir -p -m 0700 -- "$dir/a" "$dir/b"
ssh-keygen -q -t ed25519 -N '' -f "$dir/key" -C treestate-test
for h in a b; do
	ssh-keygen -q -t ed25519 -N '' -f "$dir/$h/host_key"
	cp -- "$dir/key.pub" "$dir/$h/authorized_keys"
done

ip netns add "$B_NS"
ip link add "$A_LINK" type veth peer name "$B_LINK"
ip link set "$B_LINK" netns "$B_NS"
ip addr add "$A_ADDR/24" dev "$A_LINK"
ip -n "$B_NS" addr add "$B_ADDR/24" dev "$B_LINK"
ip -n "$B_NS" link set lo up
ip link set "$A_LINK" up
ip -n "$B_NS" link set "$B_LINK" up

sshd_config() {
	local h=$1 addr=$2
	cat >"$dir/$h/sshd_config" <<CONF
ListenAddress $addr:22
HostKey $dir/$h/host_key
PidFile none
AuthorizedKeysFile $dir/$h/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv TREESTATE_*
Subsystem sftp internal-sftp
CONF
}
sshd_config a "$A_ADDR"
sshd_config b "$B_ADDR"
mkdir -p /run/sshd # privilege separation directory

# sshd is pid 1 of the host's pid namespace (so orphans there, restored
# trees among them, come to it); unshare holds it and kills it when killed
# (--kill-child). sshd runs in the
# foreground (-D) and says on stderr when it listens.
for h in a b; do
	netns=()
	[[ $h == b ]] && netns=(nsenter "--net=/run/netns/$B_NS")
	setsid unshare --pid --fork --kill-child --mount --propagation private --mount-proc -- \
		"${netns[@]}" "$SSHD" -D -e -f "$dir/$h/sshd_config" </dev/null >"$dir/$h/sshd.log" 2>&1 &
	echo $! >"$dir/$h/holder.pid"
done
for h in a b; do
	for _ in $(seq 250); do
		grep -q 'Server listening' "$dir/$h/sshd.log" 2>/dev/null && break
		sleep 0.02
	done
	grep -q 'Server listening' "$dir/$h/sshd.log" || { cat "$dir/$h/sshd.log" >&2; down; die "sshd of host $h did not start"; }
done

cat <<OUT
B_NS=$B_NS
A_ADDR=$A_ADDR
B_ADDR=$B_ADDR
KEY=$dir/key
SSH_OPTS='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes'
OUT
