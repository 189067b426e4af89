# shellcheck shell=sh
# The entrypoint of the compose `nginx` service (profile `scale`), POSIX sh:
#
#   sh entrypoint.sh nginx -g 'daemon off;'   # write the upstream list, watch it, exec nginx
#   sh entrypoint.sh render                   # write the upstream list once and exit
#
# nginx builds its consistent-hash ring from the names of the upstream's
# `server` lines; one name resolving to N addresses would put all N at the
# same points of the ring and scatter every session over them. So this script
# resolves the replicas' service name itself and writes one line per address:
#
#   server 172.18.0.4:50051 max_fails=1 fail_timeout=10s;
#
# sorted, into $UPSTREAM_FILE, which sesscache.conf includes in its upstream.
# nginx only ever sees IP addresses, so it starts whatever the project name,
# the `--scale replica=N`, or a replica being down (Docker's DNS answers only
# for running containers). With no address at all it starts with a placeholder
# that is marked `down`: calls get 502, which gRPC clients see as UNAVAILABLE.
#
# Then, every $RESOLVE_INTERVAL seconds, a background loop resolves again and,
# when the set changed, rewrites the file and sends nginx SIGHUP (what
# `nginx -s reload` does): new replicas join the ring, gone ones leave it,
# every other session keeps its replica. An empty answer while running keeps
# the current list (a DNS hiccup must not drop every replica; replicas that
# are really gone fail over by themselves, see sesscache.conf).
#
# Settings (environment):
#   REPLICAS_HOST        the name to resolve (default: replica, the compose service)
#   REPLICAS_PORT        their gRPC port (default: 50051)
#   REPLICAS_ADDRESSES   addresses to use instead of resolving, separated by
#                        spaces or commas; ADDR or ADDR:PORT (tests, static setups)
#   UPSTREAM_PARAMETERS  appended to each server line (default: max_fails=1 fail_timeout=10s)
#   UPSTREAM_FILE        the file written (default: /etc/nginx/sesscache-upstream.conf)
#   RESOLVE_INTERVAL     seconds between resolutions (default: 5)
#
# Resolution is `getent ahostsv4` (glibc, and Alpine's musl-utils), or, when
# that gives nothing (no getent, no ahostsv4), busybox's `nslookup`: IPv4
# only, so a replica on a dual-stack network is one ring point, not two.

set -eu

REPLICAS_HOST=${REPLICAS_HOST:-replica}
REPLICAS_PORT=${REPLICAS_PORT:-50051}
REPLICAS_ADDRESSES=${REPLICAS_ADDRESSES:-}
UPSTREAM_PARAMETERS=${UPSTREAM_PARAMETERS:-max_fails=1 fail_timeout=10s}
UPSTREAM_FILE=${UPSTREAM_FILE:-/etc/nginx/sesscache-upstream.conf}
RESOLVE_INTERVAL=${RESOLVE_INTERVAL:-5}
IPV4='^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$'

log() {
    printf 'sesscache-upstream: %s\n' "$*" >&2
}

# The IPv4 addresses of name $1, one a line (nothing when it does not resolve).
resolve() {
    answer=$(getent ahostsv4 "$1" 2>/dev/null | awk '{ print $1 }' | grep -E "$IPV4") || true
    if [ -z "$answer" ] && command -v nslookup >/dev/null 2>&1; then
        # No getent, a getent without ahostsv4, or no answer: ask the DNS directly.
        answer=$(nslookup -type=a "$1" 2>/dev/null | awk '/^Name:/ { named = 1; next }
            named && /^Address:/ { print $2 }' | grep -E "$IPV4") || true
    fi
    [ -z "$answer" ] || printf '%s\n' "$answer"
}

# The replicas' addresses, ADDR:PORT, one a line, sorted, no duplicates.
addresses() {
    if [ -n "$REPLICAS_ADDRESSES" ]; then
        printf '%s\n' "$REPLICAS_ADDRESSES" | tr ', ' '\n\n'
    else
        resolve "$REPLICAS_HOST"
    fi | awk -v port="$REPLICAS_PORT" 'NF { print (index($1, ":") ? $1 : $1 ":" port) }' \
       | LC_ALL=C sort -u
}

# Write the upstream list; status 0 when the file changed, 1 when it did not,
# 2 when nothing resolved and a list is already in place (kept as it is).
render() {
    found=$(addresses)
    if [ -z "$found" ] && [ -s "$UPSTREAM_FILE" ]; then
        return 2
    fi
    new="$UPSTREAM_FILE.new"
    {
        if [ -n "$REPLICAS_ADDRESSES" ]; then
            printf '# Written by entrypoint.sh from REPLICAS_ADDRESSES; do not edit.\n'
        else
            printf '# Written by entrypoint.sh from the addresses of %s; do not edit.\n' "$REPLICAS_HOST"
        fi
        if [ -z "$found" ]; then
            printf '# No replica resolved yet: every call gets 502 (gRPC UNAVAILABLE).\n'
            printf 'server 127.0.0.1:9 down;\n'
        else
            printf '%s\n' "$found" | while read -r address; do
                printf 'server %s %s;\n' "$address" "$UPSTREAM_PARAMETERS"
            done
        fi
    } >"$new"
    if [ -f "$UPSTREAM_FILE" ] && cmp -s "$new" "$UPSTREAM_FILE"; then
        rm -f "$new"
        return 1
    fi
    mv -f "$new" "$UPSTREAM_FILE"
    log "replicas: $(printf '%s' "${found:-none}" | tr '\n' ' ')"
    return 0
}

# Re-resolve every RESOLVE_INTERVAL seconds; SIGHUP nginx (pid $1) on a change.
watch() {
    while sleep "$RESOLVE_INTERVAL"; do
        kill -0 "$1" 2>/dev/null || exit 0
        status=0
        render || status=$?
        if [ "$status" -eq 0 ]; then
            log "reloading nginx"
            kill -HUP "$1" || exit 0
        fi
    done
}

if [ "$#" -eq 0 ]; then
    set -- nginx -g 'daemon off;'
fi

if [ "$1" = render ]; then
    status=0
    render || status=$?
    [ "$status" -eq 0 ] || [ "$status" -eq 1 ] || log "nothing resolved; the list in place is kept"
    exit 0
fi

# A fresh list: one left from an earlier run of this container may be stale.
rm -f "$UPSTREAM_FILE"
render || true
# exec keeps this shell's pid ($$) for nginx: it gets the stop signal directly,
# and the watcher (its child) signals that pid.
watch "$$" &
exec "$@"
