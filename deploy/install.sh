#!/bin/sh
# Install vigil as a systemd service on a Raspberry Pi (or any Debian-like host), or remove it.
#
#   sudo deploy/install.sh               install or update; safe to run again (changes nothing
#                                        the second time when nothing changed)
#   sudo deploy/install.sh --uninstall   remove the service, /opt/vigil and the vigil user;
#                                        recordings and the config are always kept
#
# Options:
#   --destdir DIR    install into DIR instead of / (also: DESTDIR=DIR in the environment).
#                    Every path is prefixed; users and groups go into DIR/etc/passwd and
#                    DIR/etc/group (useradd --prefix), and systemctl is never called.
#                    For trying the script out: the venv inside DIR only works from there.
#   --no-systemctl   do not run systemctl (daemon-reload, enable, restart).
#   --python PY      the interpreter the venv is made from (default: python3).
#   --source DIR     the vigil source tree to install (default: this script's repository).
#
# What it sets up: the groups video and gpio (when missing) and the system user vigil in
# them; /opt/vigil/venv (python3 -m venv --system-site-packages, so Raspberry Pi OS's
# python3-picamera2 and python3-lgpio are visible) with vigil installed into it at the
# versions in constraints.txt, except numpy: where the system has one (python3-numpy, which
# picamera2's apt packages are compiled against) the venv keeps using it, never a second
# numpy of its own; the example config at /boot/firmware/vigil.yaml (or /etc/vigil/vigil.yaml
# where there is no /boot/firmware) when no config exists yet; a random API (operator) token
# in /etc/vigil/api-token and a random viewer (footage) token in /etc/vigil/viewer-token
# (root only; the unit hands them to vigil with LoadCredential=) when there is none; the
# recording roots the config names, owned by vigil;
# /etc/systemd/system/vigil.service with ReadWritePaths= set to those roots, and a drop-in
# that bounds systemd-time-wait-sync's wait to 60 s.
set -eu

SERVICE_USER=vigil
SERVICE_GROUPS="video gpio"
PREFIX=/opt/vigil
STATE_DIR=/var/lib/vigil
UNIT_PATH=/etc/systemd/system/vigil.service
TIME_WAIT_DROPIN=/etc/systemd/system/systemd-time-wait-sync.service.d/vigil.conf
TOKEN_PATH=/etc/vigil/api-token
VIEWER_TOKEN_PATH=/etc/vigil/viewer-token
NUMPY_MINIMUM=1.24  # pyproject.toml's lower bound for numpy
CONFIG_PATHS="/boot/firmware/vigil.yaml /etc/vigil/vigil.yaml"
EX_USAGE=64
EX_CONFIG=78

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(dirname "$here")
destdir=${DESTDIR:-}
python=python3
use_systemctl=1
action=install

say() { printf 'vigil install: %s\n' "$*"; }
die() {
    code=$1
    shift
    printf 'vigil install: error: %s\n' "$*" >&2
    exit "$code"
}

while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) action=uninstall ;;
        --no-systemctl) use_systemctl=0 ;;
        --destdir) [ $# -ge 2 ] || die "$EX_USAGE" "--destdir needs a directory"; destdir=$2; shift ;;
        --destdir=*) destdir=${1#--destdir=} ;;
        --python) [ $# -ge 2 ] || die "$EX_USAGE" "--python needs an interpreter"; python=$2; shift ;;
        --source) [ $# -ge 2 ] || die "$EX_USAGE" "--source needs a directory"; source_dir=$2; shift ;;
        -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "$EX_USAGE" "unknown option '$1' (try --help)" ;;
    esac
    shift
done

if [ -n "$destdir" ]; then
    destdir=$(cd "$destdir" 2>/dev/null && pwd) || die "$EX_USAGE" "--destdir $destdir: no such directory"
    use_systemctl=0  # never touch the running system's services for a scratch root
else
    [ "$(id -u)" -eq 0 ] || die 77 "run as root (sudo $0)"
fi
root=$destdir  # "" for the real system; every absolute path below is "$root/..."

account() {  # account COMMAND ARGS...: groupadd/useradd/usermod/userdel/groupdel on $root
    tool=$1
    shift
    if [ -n "$root" ]; then
        "$tool" --prefix "$root" "$@"
    else
        "$tool" "$@"
    fi
}

# --- accounts -----------------------------------------------------------------------------

has_group() { grep -q "^$1:" "$root/etc/group" 2>/dev/null; }
has_user() { grep -q "^$1:" "$root/etc/passwd" 2>/dev/null; }
in_group() {  # in_group USER GROUP: USER is a supplementary member of GROUP
    awk -F: -v g="$2" -v u="$1" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 }
        END { exit !found }' "$root/etc/group"
}
user_field() {  # user_field USER N: field N (3 = uid, 4 = gid) of USER's passwd line
    awk -F: -v u="$1" -v n="$2" '$1 == u { print $n }' "$root/etc/passwd"
}

ensure_accounts() {
    for group in $SERVICE_GROUPS; do
        if ! has_group "$group"; then
            say "creating group $group"
            account groupadd --system "$group"
        fi
    done
    if ! has_user "$SERVICE_USER"; then
        say "creating system user $SERVICE_USER in groups: $SERVICE_GROUPS"
        account useradd --system --user-group --no-create-home --home-dir "$STATE_DIR" \
            --shell /usr/sbin/nologin --groups "$(echo "$SERVICE_GROUPS" | tr ' ' ,)" "$SERVICE_USER"
    fi
    for group in $SERVICE_GROUPS; do
        if ! in_group "$SERVICE_USER" "$group"; then
            say "adding $SERVICE_USER to group $group"
            account usermod --append --groups "$group" "$SERVICE_USER"
        fi
    done
}

# --- the venv -----------------------------------------------------------------------------

package_parts="pyproject.toml README.md constraints.txt controller states hw"

source_digest() {  # a digest of every file that goes into the package
    # shellcheck disable=SC2086  # package_parts is a list of names
    (cd "$source_dir" && find $package_parts -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

ensure_venv() {
    venv=$root$PREFIX/venv
    stamp=$root$PREFIX/installed-source.sha256
    for part in $package_parts; do
        [ -e "$source_dir/$part" ] || die 66 "$source_dir is not a vigil source tree (no $part)"
    done
    install -d -m 0755 "$root$PREFIX"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $PREFIX/venv (with system site packages, for python3-picamera2)"
        "$python" -m venv --system-site-packages "$venv"
    fi
    digest=$(source_digest)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && [ -x "$venv/bin/vigil" ]; then
        return
    fi
    say "installing vigil from $source_dir into $PREFIX/venv"
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the source.
    stage=$(mktemp -d)
    # shellcheck disable=SC2086  # package_parts is a list of names
    (cd "$source_dir" && tar --exclude=__pycache__ -cf - $package_parts) | tar -C "$stage" -xf -
    pin_system_numpy "$stage/constraints.txt"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
            --constraint "$stage/constraints.txt" "$stage"; then
        rm -rf "$stage"
        die 1 "pip could not install vigil into $PREFIX/venv"
    fi
    rm -rf "$stage"
    check_numpy_is_the_systems
    printf '%s\n' "$digest" > "$stamp"
    changed=1
}

system_numpy() {  # the version of the numpy the base interpreter has (python3-numpy), or ""
    "$python" -I -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true
}

pin_system_numpy() {  # pin_system_numpy CONSTRAINTS: make pip keep the system's numpy
    sys_numpy=$(system_numpy)
    [ -n "$sys_numpy" ] || return 0  # no system numpy: the lock's numpy goes into the venv
    if ! "$python" -I -c "import sys, numpy
v = tuple(int(p) for p in numpy.__version__.split('.')[:2])
sys.exit(v < tuple(int(p) for p in '$NUMPY_MINIMUM'.split('.')))"; then
        die 1 "the system's numpy $sys_numpy is older than vigil's minimum $NUMPY_MINIMUM; a" \
            "newer numpy in the venv would break picamera2's apt packages: upgrade python3-numpy"
    fi
    say "keeping the system's numpy $sys_numpy (picamera2's apt packages are built against it)"
    sed "s/^numpy==.*/numpy==$sys_numpy/" "$1" > "$1.tmp" && mv "$1.tmp" "$1"
    # A numpy an earlier install put into the venv would shadow the system's: remove it.
    if "$venv/bin/python" -I -c "import sys, numpy; sys.exit(not numpy.__file__.startswith(sys.prefix))" \
            2>/dev/null; then
        say "removing the venv's own numpy, which shadowed the system's"
        "$venv/bin/python" -m pip uninstall --quiet --yes numpy
    fi
}

check_numpy_is_the_systems() {
    [ -n "$(system_numpy)" ] || return 0
    if "$venv/bin/python" -I -c "import sys, numpy; sys.exit(not numpy.__file__.startswith(sys.prefix))"; then
        die 1 "pip put a numpy of its own into $PREFIX/venv over the system's; picamera2 would fail" \
            "to import (numpy.dtype size changed)"
    fi
}

# --- config, token, recording roots, unit ---------------------------------------------------

# ensure_token PATH WHAT: a random token at PATH, readable by root only, unless one is there.
ensure_token() {
    [ -e "$root$1" ] && return
    say "creating the $2 token $1 (readable by root only; systemd passes it to vigil)"
    install -d -m 0755 "$(dirname "$root$1")"
    (umask 077 && "$python" -I -c 'import secrets; print(secrets.token_hex(32))' > "$root$1.tmp")
    mv "$root$1.tmp" "$root$1"
}

ensure_time_wait_dropin() {
    if [ ! -f "$root$TIME_WAIT_DROPIN" ] || ! cmp -s "$source_dir/deploy/time-wait-sync.conf" "$root$TIME_WAIT_DROPIN"; then
        say "installing $TIME_WAIT_DROPIN (the wait for clock sync gives up after 60 s)"
        install -D -m 0644 "$source_dir/deploy/time-wait-sync.conf" "$root$TIME_WAIT_DROPIN"
        changed=1
    fi
}

find_config() {
    for path in $CONFIG_PATHS; do
        if [ -e "$root$path" ]; then
            echo "$path"
            return
        fi
    done
}

ensure_config() {
    config=$(find_config)
    if [ -n "$config" ]; then
        say "keeping the existing config $config"
        return
    fi
    if [ -d "$root/boot/firmware" ]; then
        config=/boot/firmware/vigil.yaml
    else
        config=/etc/vigil/vigil.yaml
    fi
    say "writing the example config to $config"
    install -D -m 0644 "$source_dir/deploy/vigil.example.yaml" "$root$config"
}

recording_roots() {  # the recording roots the config names, absolute, one a line
    "$root$PREFIX/venv/bin/python" -B - "$root$config" "$STATE_DIR" <<'EOF'
import sys
from pathlib import Path

from controller.config import ConfigError, load_config

try:
    recording = load_config(sys.argv[1]).config.recording
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(78)
for path in (recording.root, *recording.fallback_roots):
    # systemd starts vigil in its state directory, so relative roots are relative to it.
    print(Path(sys.argv[2]) / path if not path.is_absolute() else path)
EOF
}

key_location() {  # where the daemon keeps its signing key: integrity.key_file, else the state directory
    STATE_DIRECTORY="$STATE_DIR" "$root$PREFIX/venv/bin/python" -B - "$root$config" <<'EOF'
import sys

from controller.config import ConfigError, load_config
from controller.keys import key_path

try:
    print(key_path(load_config(sys.argv[1]).config.integrity.key_file))
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(78)
EOF
}

ensure_key() {  # after ensure_roots_and_unit: the service user's ids are known
    key=$(key_location) || die "$EX_CONFIG" "$config is invalid; fix it and run $0 again"
    [ -e "$root$key" ] && return
    say "creating the footage signing key $key (mode 0600, owned by $SERVICE_USER)"
    key_dir=$(dirname "$root$key")
    [ -d "$key_dir" ] || install -d -m 0700 -o "$uid" -g "$gid" "$key_dir"
    public=$(umask 077 && "$root$PREFIX/venv/bin/vigil" key --create --key-file "$root$key") ||
        die 1 "could not create the signing key $key"
    chown "$uid:$gid" "$root$key"
    chmod 0600 "$root$key"
    say "footage manifests are signed with public key $public (vigil key prints it again)"
}

ensure_roots_and_unit() {
    roots=$(recording_roots) || die "$EX_CONFIG" "$config is invalid; fix it and run $0 again"
    case $roots in
        *[[:blank:]]*) die "$EX_CONFIG" "a recording root in $config contains a space; systemd's" \
            "ReadWritePaths= would split it: choose paths without spaces" ;;
    esac
    uid=$(user_field "$SERVICE_USER" 3)
    gid=$(user_field "$SERVICE_USER" 4)
    install -d -m 0750 -o "$uid" -g "$gid" "$root$STATE_DIR"
    rw_paths=""
    for path in $roots; do
        case $path in
            "$STATE_DIR"/*)
                if [ ! -e "$root$path" ]; then
                    say "creating recording root $path"
                    install -d -m 0750 -o "$uid" -g "$gid" "$root$path"
                fi ;;
            *)
                # Roots elsewhere are often mount points (a USB disk): making the directory
                # on the SD card while the disk is away would record to the wrong place.
                [ -d "$root$path" ] || say "note: recording root $path does not exist; create it" \
                    "(owned by $SERVICE_USER) or mount its disk" ;;
        esac
        rw_paths="$rw_paths -$path"
    done
    unit_text=$(sed "s#^ReadWritePaths=.*#ReadWritePaths=${rw_paths# }#" "$source_dir/deploy/vigil.service")
    if [ ! -f "$root$UNIT_PATH" ] || [ "$(cat "$root$UNIT_PATH")" != "$unit_text" ]; then
        say "installing $UNIT_PATH (ReadWritePaths=${rw_paths# })"
        install -d -m 0755 "$(dirname "$root$UNIT_PATH")"
        printf '%s\n' "$unit_text" > "$root$UNIT_PATH.tmp"
        chmod 0644 "$root$UNIT_PATH.tmp"
        mv "$root$UNIT_PATH.tmp" "$root$UNIT_PATH"
        changed=1
    fi
}

do_install() {
    changed=0
    ensure_accounts
    ensure_venv
    ensure_config
    ensure_token "$TOKEN_PATH" API
    ensure_token "$VIEWER_TOKEN_PATH" viewer
    ensure_roots_and_unit
    ensure_key
    ensure_time_wait_dropin
    if [ "$use_systemctl" -eq 1 ]; then
        systemctl daemon-reload
        if ! systemctl is-enabled --quiet vigil.service; then
            systemctl enable --now vigil.service
        elif [ "$changed" -eq 1 ]; then
            systemctl try-restart vigil.service
        fi
    fi
    say "done; config: $config (check it with: $PREFIX/venv/bin/vigil check-config $config)"
}

do_uninstall() {
    if [ "$use_systemctl" -eq 1 ] && [ -f "$UNIT_PATH" ]; then
        systemctl disable --now vigil.service || true
    fi
    if [ -f "$root$UNIT_PATH" ]; then
        say "removing $UNIT_PATH"
        rm -f "$root$UNIT_PATH"
        [ "$use_systemctl" -eq 0 ] || systemctl daemon-reload
    fi
    if [ -f "$root$TIME_WAIT_DROPIN" ]; then
        say "removing $TIME_WAIT_DROPIN"
        rm -f "$root$TIME_WAIT_DROPIN"
        rmdir "$(dirname "$root$TIME_WAIT_DROPIN")" 2>/dev/null || true
    fi
    if [ -d "$root$PREFIX" ]; then
        say "removing $PREFIX"
        rm -rf "$root$PREFIX"
    fi
    if has_user "$SERVICE_USER"; then
        say "removing user $SERVICE_USER"
        account userdel "$SERVICE_USER"
    fi
    if has_group "$SERVICE_USER"; then
        account groupdel "$SERVICE_USER"
    fi
    say "done; kept the recordings under $STATE_DIR (and any other recording roots), the config" \
        "and the tokens $TOKEN_PATH and $VIEWER_TOKEN_PATH"
}

if [ "$action" = install ]; then
    do_install
else
    do_uninstall
fi
