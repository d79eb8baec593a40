#!/usr/bin/env bash
# setup-criu.sh - provide a working CRIU for treestate.
#
# Usage: bash scripts/setup-criu.sh [--force] [--quiet]
#
# Which CRIU this kernel needs:
#   - kernels >= 6.13 add a [vvar_vclock] mapping that breaks the vDSO
#     handling of CRIU < 4.1 (Debian 12's 3.17 fails `criu check`);
#   - kernels >= 6.16 refuse the socket option CRIU < 4.2 reads from every
#     TCP and UDP socket ("Can't get 1:16 opt: Operation not supported",
#     CRIU issue 2705, fixed in 4.2), so CRIU 4.1 cannot dump any server.
# Debian 13 ("trixie") ships 4.1.1; Debian unstable ("sid") ships 4.2.1.
# So we fetch criu PINNED_VERSION and its whole runtime closure (glibc
# included) from sid with a PRIVATE apt configuration, unpack the .debs into a
# git-ignored prefix and point a copy of the criu binary at the prefix's own
# loader and libraries with patchelf.  The system's packages and apt state are
# left untouched.
#
# Layout of <repo>/.criu (everything downloaded lives here; root-owned, 0755):
#   apt/            private apt config, lists and cache (kept between runs)
#   tools/          patchelf, unpacked from the system's own Debian release
#   tree.XXXXXX/    unpacked sid packages + bin/criu (the patched copy)
#   bin/criu        symlink to tree.XXXXXX/bin/criu; created last, atomically
#   setup.log       output of the last build's apt/dpkg/patchelf commands
#
# Running as root, the script writes only below a directory path that root
# owns and nobody else can write (else another user could swap .criu/ or plant
# symlinks for root to follow, and treestate would refuse the criu anyway);
# downloads run as apt's unprivileged _apt user where it exists.
#
# The patched binary's ELF interpreter is an absolute path into tree.XXXXXX,
# so moving the repository breaks it; the next run then notices that criu no
# longer works and rebuilds.
#
# The last line of stdout is the path of a working criu (`| tail -1`);
# with --quiet that path is the only output.  Errors go to stderr, prefixed
# "setup-criu:", with a non-zero exit status.

set -euo pipefail

readonly TARGET_SUITE=sid      # the Debian suite that ships PINNED_VERSION
# The criu package versions accepted from TARGET_SUITE (a shell pattern).  When
# sid moves on, the download is refused with a message saying so: review the
# new release (and the tests) before widening the pin.
readonly PINNED_VERSION='4.2.1-*'
readonly KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(dirname -- "$SCRIPT_DIR")
PREFIX=$REPO_ROOT/.criu
LOCAL_CRIU=$PREFIX/bin/criu
LOG=$PREFIX/setup.log

FORCE=0
QUIET=0

info() { [[ $QUIET == 1 ]] || printf 'setup-criu: %s\n' "$*"; }
die() {
	printf 'setup-criu: error: %s\n' "$*" >&2
	exit 1
}
# Like die, but also shows the end of the build log.
die_log() {
	printf 'setup-criu: error: %s\n' "$*" >&2
	if [[ -s $LOG ]]; then
		printf 'setup-criu: last lines of %s:\n' "$LOG" >&2
		tail -n 20 -- "$LOG" | sed 's/^/    /' >&2
	fi
	exit 1
}
# Run a command with its output appended to the build log.
run() {
	printf '+ %s\n' "$*" >>"$LOG"
	"$@" >>"$LOG" 2>&1
}

usage() {
	cat <<'EOF'
Usage: bash scripts/setup-criu.sh [--force] [--quiet]

Makes a CRIU >= 4.1 available, building it into <repo>/.criu if needed,
and prints its path on the last line of output.

  --force   rebuild <repo>/.criu even if a working criu is already there
  --quiet   print only the path of the working criu
EOF
}

for arg in "$@"; do
	case $arg in
	--force) FORCE=1 ;;
	--quiet) QUIET=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $arg" ;;
	esac
done

[[ $(id -u) == 0 ]] || die "must run as root (criu needs CAP_SYS_ADMIN and friends); try: sudo bash $0 $*"

# The oldest CRIU that works on the running kernel (see the top of this file).
min_version() {
	local major minor
	IFS=. read -r major minor _ <<<"$(uname -r)"
	if ((major > 6 || (major == 6 && minor >= 16))); then
		echo "4 2"
	else
		echo "4 1"
	fi
}
read -r MIN_MAJOR MIN_MINOR <<<"$(min_version)"
readonly MIN_MAJOR MIN_MINOR

# Root must not write where another user can swap a directory or plant a
# symlink: every directory from / down to $1 is root-owned and writable by
# nobody else (sticky world-writable directories such as /tmp excepted: their
# other users cannot rename or replace what root made in them).
trusted_dir() {
	local dir=$1 path=/ part owner mode
	local -a parts
	IFS=/ read -r -a parts <<<"${dir#/}"
	for part in "" "${parts[@]}"; do
		[[ -n $part ]] && path=${path%/}/$part
		[[ -L $path ]] && { echo "$path is a symlink"; return 1; }
		[[ -d $path ]] || return 0 # created below by root
		read -r owner mode < <(stat -c '%u %a' -- "$path")
		[[ $owner == 0 ]] || { echo "$path is owned by uid $owner, not root"; return 1; }
		if ((8#$mode & 8#022)) && ! ((8#$mode & 8#1000)); then
			echo "$path is writable by group or others (mode $mode)"
			return 1
		fi
	done
}
if ! why=$(trusted_dir "$PREFIX"); then
	die "will not build criu into $PREFIX as root: $why. Use a root-owned checkout that only root can write (chown -R root: and chmod go-w), or install CRIU >= $MIN_MAJOR.$MIN_MINOR system-wide"
fi

# --- checking an existing criu ------------------------------------------------

# Prints "MAJOR MINOR" of the criu binary $1, or fails.
criu_version() {
	local out re='(^|'$'\n'')Version: *([0-9]+)\.([0-9]+)'
	out=$("$1" --version 2>/dev/null) || return 1
	# Output looks like "Version: 4.1.1" (plus a "GitID: ..." line on git builds).
	[[ $out =~ $re ]] || return 1
	printf '%s %s\n' "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
}

# Succeeds if $1 is a criu >= MIN_MAJOR.MIN_MINOR whose `criu check` passes.  Judged by exit
# status only: criu logs e.g. "Can't setup RLIMIT_NOFILE" as an error in some
# environments yet works fine.
criu_usable() {
	local ver major minor
	[[ -x $1 ]] || return 1
	ver=$(criu_version "$1") || return 1
	read -r major minor <<<"$ver"
	((major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR))) || return 1
	"$1" check >/dev/null 2>&1
}

# Reports the verdict of criu $1 and prints its path as the last line.
report() {
	local criu=$1 verdict
	if [[ $QUIET == 0 ]]; then
		verdict=$("$criu" check 2>/dev/null) || die "$criu check failed"
		info "criu check: ${verdict:-ok}"
		info "criu --version: $("$criu" --version | head -n 1)"
	fi
	printf '%s\n' "$criu"
}

if [[ $FORCE == 0 ]]; then
	if criu_usable "$LOCAL_CRIU"; then
		info "project-local criu is ready (use --force to rebuild)"
		report "$LOCAL_CRIU"
		exit 0
	fi
	if sys_criu=$(command -v criu) && [[ $(realpath -- "$sys_criu") != "$PREFIX"/* ]] && criu_usable "$sys_criu"; then
		info "system criu is recent enough and passes 'criu check'; nothing to build"
		report "$sys_criu"
		exit 0
	fi
fi

# --- building -----------------------------------------------------------------

for tool in apt-get apt-cache apt-config dpkg dpkg-deb flock realpath awk; do
	command -v "$tool" >/dev/null || die "required tool not found: $tool (this script expects Debian/apt)"
done
[[ -r $KEYRING ]] || die "$KEYRING not found (install debian-archive-keyring)"

mkdir -p -m 0755 -- "$PREFIX" "$PREFIX/bin" "$PREFIX/tools" || die "cannot create $PREFIX"
why=$(trusted_dir "$PREFIX/bin") || die "will not build criu into $PREFIX as root: $why"

# Serialise concurrent runs; a run that waited may find the work already done.
exec 9>"$PREFIX/.lock"
if ! flock -n 9; then
	info "another setup-criu run is in progress; waiting for it"
	flock 9
	if [[ $FORCE == 0 ]] && criu_usable "$LOCAL_CRIU"; then
		report "$LOCAL_CRIU"
		exit 0
	fi
fi

: >"$LOG"
info "building criu from Debian $TARGET_SUITE into $PREFIX (log: $LOG)"

# The tree is built in place under a unique name and published only at the end
# by atomically replacing the bin/criu symlink, so an interrupted run never
# leaves something the quick check above would accept.  The tree never moves
# afterwards, which is what lets the ELF interpreter path be absolute.
TREE=$(mktemp -d -- "$PREFIX/tree.XXXXXX") || die "cannot create a build directory in $PREFIX"
chmod 0755 -- "$TREE" # traversable by _apt for the download, like the rest of the prefix
PUBLISHED=0
cleanup() {
	[[ $PUBLISHED == 1 ]] || rm -rf -- "$TREE"
	rm -f -- "$PREFIX/bin/.criu.new.$$"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Trees left behind by runs that were killed outright (we hold the lock, so no
# other run is using them).
current=$(readlink -- "$LOCAL_CRIU" 2>/dev/null || true)
for old in "$PREFIX"/tree.*; do
	[[ -d $old && $old != "$TREE" && $current != "../$(basename -- "$old")/"* ]] || continue
	rm -rf -- "$old"
done

# --- patchelf: from PATH, or unpacked from the system's own Debian release ---

# apt downloads as its unprivileged _apt user (apt's own default) where that
# user exists; a download directory is then handed to _apt.  Where the path
# to the prefix is closed to _apt (a checkout under /root), apt itself falls
# back to root with a warning in the log.  Archives are signature-checked
# either way.
if id _apt >/dev/null 2>&1; then
	APT_SANDBOX=()
	apt_owns() { chown _apt -- "$@"; }
else
	APT_SANDBOX=(-o APT::Sandbox::User=root)
	apt_owns() { :; }
fi

PATCHELF=
if command -v patchelf >/dev/null; then
	PATCHELF=$(command -v patchelf)
elif "$PREFIX/tools/usr/bin/patchelf" --version >/dev/null 2>&1; then
	PATCHELF=$PREFIX/tools/usr/bin/patchelf
else
	info "fetching patchelf (from the system's apt sources, not installed)"
	policy=$(apt-cache policy patchelf 2>/dev/null || true)
	if [[ $policy != *"Candidate: "[0-9]* ]]; then
		# A freshly provisioned system may have no package lists at all.
		run apt-get update || die_log "apt-get update failed"
	fi
	pe_dl=$(mktemp -d -- "$PREFIX/tools/dl.XXXXXX")
	apt_owns "$pe_dl"
	if (cd -- "$pe_dl" && run apt-get "${APT_SANDBOX[@]}" download patchelf) &&
		run dpkg -x "$pe_dl"/patchelf_*.deb "$PREFIX/tools" &&
		"$PREFIX/tools/usr/bin/patchelf" --version >/dev/null 2>&1; then
		PATCHELF=$PREFIX/tools/usr/bin/patchelf
	else
		info "could not use a downloaded patchelf; installing the patchelf package instead"
		DEBIAN_FRONTEND=noninteractive run apt-get install -y --no-install-recommends patchelf || die_log "could not obtain patchelf"
		PATCHELF=$(command -v patchelf) || die "patchelf still not found after installing it"
	fi
	rm -rf -- "$pe_dl"
fi

# --- private apt configuration for the target suite --------------------------

# The mirror is taken from the system's own apt sources: the first "deb"
# entry serving the system's release with component main.  Both the deb822
# (*.sources) and the one-line (sources.list, *.list) formats are read.
find_mirror() {
	local codename sl sp f
	# shellcheck disable=SC1091
	codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
	[[ -n $codename ]] || return 1
	eval "$(apt-config shell sl Dir::Etc::sourcelist/f sp Dir::Etc::sourceparts/d)"
	{
		if [[ -f ${sl:-} ]]; then printf '%s\n' "$sl"; fi
		for f in "${sp:-/etc/apt/sources.list.d/}"*; do
			if [[ -f $f && ($f == *.list || $f == *.sources) ]]; then printf '%s\n' "$f"; fi
		done
	} | while IFS= read -r f; do
		if [[ $f == *.sources ]]; then
			awk -v want="$codename" '
				function norm(s) { gsub(/[ \t]+/, " ", s); sub(/^ /, "", s); sub(/ $/, "", s); return s }
				function has(list, word) { return index(" " list " ", " " word " ") > 0 }
				function flush() {
					if (has(f["types"], "deb") && has(f["suites"], want) &&
					    has(f["components"], "main") && f["enabled"] != "no") {
						split(f["uris"], u, " "); print u[1]
					}
					delete f; key = ""
				}
				/^[ \t]*#/ { next }
				/^[ \t]*$/ { flush(); next }
				/^[ \t]/ { if (key != "") f[key] = norm(f[key] " " $0); next }   # continuation
				{
					i = index($0, ":"); if (!i) next
					key = tolower(substr($0, 1, i - 1))
					f[key] = norm(substr($0, i + 1))
				}
				END { flush() }' "$f"
		else
			awk -v want="$codename" '
				$1 != "deb" { next }
				{
					i = 2
					if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }   # [options]
					uri = $(i); suite = $(i + 1)
					for (j = i + 2; j <= NF && $j !~ /^#/; j++)
						if (suite == want && $j == "main") { print uri; next }
				}' "$f"
		fi
	done | awk '!found && /^https?:\/\// { sub(/\/+$/, ""); print; found = 1 }'
}

MIRROR=$(find_mirror)
[[ -n $MIRROR ]] || die "could not find an http(s) Debian mirror serving this system's release (main) in the apt sources"
info "mirror: $MIRROR (from the system's apt sources), suite $TARGET_SUITE"

APTDIR=$PREFIX/apt
mkdir -p -- "$APTDIR/sources.list.d" "$APTDIR/preferences.d" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
: >"$APTDIR/status"
cat >"$APTDIR/sources.list.d/$TARGET_SUITE.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $TARGET_SUITE
Components: main
Signed-By: $KEYRING
EOF
# The system's apt.conf.d is still read (proxy settings etc.), but hooks that
# would poke system services after an update, extra architectures and the
# system's pinning must not leak into this private setup.  The binary package
# cache (which some images disable globally) saves re-parsing the lists on
# each of the apt calls below; it is deleted afterwards (~85 MB).
cat >"$APTDIR/apt.conf" <<EOF
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear APT::Architectures;
APT::Architectures { "$(dpkg --print-architecture)"; };
Acquire::Languages "none";
Dir::Cache::pkgcache "pkgcache.bin";
Dir::Cache::srcpkgcache "srcpkgcache.bin";
EOF
PRIVATE_APT=(
	-c "$APTDIR/apt.conf"
	-o "Dir::Etc::SourceList=/dev/null"
	-o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
	-o "Dir::Etc::Preferences=/dev/null"
	-o "Dir::Etc::PreferencesParts=$APTDIR/preferences.d"
	-o "Dir::State=$APTDIR"
	-o "Dir::State::Lists=$APTDIR/lists"
	-o "Dir::State::status=$APTDIR/status" # empty: resolve as if nothing were installed
	-o "Dir::Cache=$APTDIR/cache"
	"${APT_SANDBOX[@]}"
)

info "updating private package lists"
run apt-get "${PRIVATE_APT[@]}" update || die_log "apt-get update of the private $TARGET_SUITE lists failed"

# Runtime closure of criu: Depends and Pre-Depends only.  Lines without
# indentation name the packages; "<name>" marks a virtual package, whose
# providers are listed (and recursed into) separately.
deps=$(apt-cache "${PRIVATE_APT[@]}" depends --recurse --no-recommends --no-suggests \
	--no-conflicts --no-breaks --no-replaces --no-enhances criu 2>>"$LOG") ||
	die_log "apt-cache could not resolve the dependencies of criu in $TARGET_SUITE"
mapfile -t PKGS < <(grep -v -e '^[[:space:]]' -e '^<' <<<"$deps" | sort -u)
[[ ${#PKGS[@]} -gt 0 ]] || die_log "no packages found for criu in $TARGET_SUITE"

# The pin: the criu that sid offers must be the reviewed version.
criu_candidate=$(apt-cache "${PRIVATE_APT[@]}" policy criu 2>>"$LOG" | awk '$1 == "Candidate:" { print $2 }')
# shellcheck disable=SC2053 # PINNED_VERSION is a pattern
[[ -n $criu_candidate && $criu_candidate == $PINNED_VERSION ]] ||
	die "Debian $TARGET_SUITE offers criu ${criu_candidate:-(none)}, not the pinned $PINNED_VERSION; review that release and update PINNED_VERSION in $0"
for i in "${!PKGS[@]}"; do
	[[ ${PKGS[i]} == criu ]] && PKGS[i]=criu=$criu_candidate
done

info "downloading ${#PKGS[@]} packages (criu $criu_candidate)"
DEBS=$TREE/.debs
mkdir -p -- "$DEBS"
apt_owns "$DEBS"
(cd -- "$DEBS" && run apt-get "${PRIVATE_APT[@]}" download "${PKGS[@]}") ||
	die_log "downloading the criu packages failed"
rm -f -- "$APTDIR"/cache/*.bin

info "unpacking"
# dpkg -x only unpacks files: maintainer scripts are deliberately not run.
for deb in "$DEBS"/*.deb; do
	run dpkg -x "$deb" "$TREE" || die_log "dpkg -x $(basename -- "$deb") failed"
	# shellcheck disable=SC2016 # dpkg-deb expands ${...} itself
	dpkg-deb --show --showformat='${Package} ${Version}\n' "$deb" >>"$TREE/MANIFEST"
done
rm -rf -- "$DEBS"
[[ -x $TREE/usr/sbin/criu ]] || die "the criu package did not contain usr/sbin/criu"

info "patching criu to use the unpacked loader and libraries"
mkdir -p -- "$TREE/bin"
cp -- "$TREE/usr/sbin/criu" "$TREE/bin/criu"
interp=$("$PATCHELF" --print-interpreter "$TREE/bin/criu") || die_log "patchelf cannot read $TREE/bin/criu"
LOADER=
for cand in "$TREE$interp" "$TREE/usr$interp"; do
	if [[ -e $cand ]]; then
		LOADER=$(realpath -e -- "$cand")
		break
	fi
done
[[ -n $LOADER && $LOADER == "$TREE"/* ]] || die "the dynamic loader $interp was not found in the unpacked packages"
# $ORIGIN keeps the library search inside this tree; RPATH (not RUNPATH) also
# applies to the libraries' own dependencies and to glibc's dlopen()s, so the
# system's libraries are never mixed in.  The interpreter cannot be relative.
rpath=
while IFS= read -r dir; do
	# shellcheck disable=SC2016 # $ORIGIN is for the dynamic loader
	rpath+=${rpath:+:}'$ORIGIN/..'${dir#"$TREE"}
done < <(find "$TREE" -name 'lib*.so.[0-9]*' -printf '%h\n' | sort -u)
run "$PATCHELF" --set-interpreter "$LOADER" --force-rpath --set-rpath "$rpath" "$TREE/bin/criu" ||
	die_log "patchelf failed"

# Every library must resolve inside the tree: glibc's loader would otherwise
# silently fall back to the system's (older) libraries via ld.so.cache.
libs=$("$LOADER" --list "$TREE/bin/criu" 2>&1) || die "the patched criu does not load: $libs"
[[ $libs != *"not found"* ]] || die "the patched criu is missing libraries:"$'\n'"$(grep 'not found' <<<"$libs")"
while read -r path; do
	real=$(realpath -e -- "$path" 2>/dev/null) || real=
	if [[ $real != "$TREE"/* ]]; then
		die "the patched criu would load $path from outside $TREE"
	fi
done < <(awk '$2 == "=>" { print $3; next } $1 ~ /^\// { print $1 }' <<<"$libs")

criu_usable "$TREE/bin/criu" || {
	"$TREE/bin/criu" check >>"$LOG" 2>&1 || true
	die_log "the freshly built criu does not pass 'criu check'"
}

# Publish: rename(2) over the old symlink is atomic.
ln -s -- "../$(basename -- "$TREE")/bin/criu" "$PREFIX/bin/.criu.new.$$"
mv -Tf -- "$PREFIX/bin/.criu.new.$$" "$LOCAL_CRIU"
PUBLISHED=1
# The tree the old symlink pointed to ("../tree.XXXXXX/bin/criu").
old_tree=${current#../}
old_tree=${old_tree%%/*}
if [[ $old_tree == tree.* ]]; then rm -rf -- "${PREFIX:?}/$old_tree"; fi

info "installed criu $(sed -n 's/^criu //p' "$TREE/MANIFEST") with ${#PKGS[@]} packages from $TARGET_SUITE"
report "$LOCAL_CRIU"
