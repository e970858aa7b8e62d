#!/usr/bin/env bash
# clickhouse-server.sh start|stop|status|url
# Starts a throw-away ClickHouse (Debian bookworm clickhouse-server 18.16.1) on loopback, HTTP only,
# for tests and CI (doc/clickhouse.md). Idempotent; installs the package with apt-get when missing.
# Env: CH_DIR (default /tmp/ch-test), CH_HTTP_PORT (default 18123), CH_USER/CH_PASSWORD
#      (extra user, default collector / collector-test-pw), CH_TZ (server <timezone>, default UTC),
#      CH_INSTALL=0 to skip apt-get, CH_DEBIAN_MIRROR (only on Debian 13+, default: the first
#      mirror in the apt sources).
set -euo pipefail
CH_DIR=${CH_DIR:-/tmp/ch-test}
CH_HTTP_PORT=${CH_HTTP_PORT:-18123}
CH_USER=${CH_USER:-collector}
CH_PASSWORD=${CH_PASSWORD:-collector-test-pw}
CH_TZ=${CH_TZ:-UTC}
PIDFILE="$CH_DIR/server.pid"
URL="http://127.0.0.1:${CH_HTTP_PORT}"

ping_ok() {  # true when GET /ping answers "Ok." (curl if present, else bash /dev/tcp)
  local out
  if command -v curl >/dev/null 2>&1; then
    out=$(curl -s --max-time 1 "$URL/ping" 2>/dev/null || true)
  else
    out=$( (exec 3<>"/dev/tcp/127.0.0.1/$CH_HTTP_PORT" &&
            printf 'GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
            timeout 1 cat <&3) 2>/dev/null | tail -n 1 | tr -d '\r' || true)
  fi
  [ "$out" = "Ok." ]
}

install_pkg() {
  [ -x /usr/sbin/clickhouse-server ] && return 0
  [ "${CH_INSTALL:-1}" = 1 ] || { echo "clickhouse-server is not installed" >&2; return 1; }
  command -v apt-get >/dev/null 2>&1 || { echo "clickhouse-server is not installed and there is no apt-get" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  local opts=()
  (
    # one installer at a time (parallel test processes may all try)
    exec 9>/tmp/clickhouse-server-install.lock
    flock 9 2>/dev/null || true
    [ -x /usr/sbin/clickhouse-server ] && exit 0
    apt-get update -qq
    if ! apt-cache show clickhouse-server >/dev/null 2>&1; then
      # Debian 13 and later have no clickhouse-server: take bookworm's through a
      # throw-away source list (the machine's own apt sources stay untouched)
      a=/tmp/ch-apt
      mirror=${CH_DEBIAN_MIRROR:-$(grep -h -E '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list \
               /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
               grep -o -E 'https?://[^ ]+/debian/?' | head -n 1)}
      [ -n "$mirror" ] || { echo "no Debian mirror found; set CH_DEBIAN_MIRROR" >&2; exit 1; }
      codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
      mkdir -p "$a/lists/partial"
      printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
        "$mirror" "$codename" "$mirror" bookworm > "$a/sources.list"
      opts=(-o "Dir::Etc::sourcelist=$a/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
            -o "Dir::State::Lists=$a/lists")
      apt-get "${opts[@]}" update -qq
    fi
    # the postinst tries to start a system service; with no systemd (or a policy-rc.d
    # that says no) that start is skipped, which is what we want
    apt-get "${opts[@]+"${opts[@]}"}" install -y -qq --no-install-recommends clickhouse-server >/dev/null
  )
}

write_config() {
  mkdir -p "$CH_DIR"/{data,tmp,log,user_files}
  cat > "$CH_DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$CH_DIR/log/server.log</log>
        <errorlog>$CH_DIR/log/server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CH_HTTP_PORT</http_port>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/tmp/</tmp_path>
    <user_files_path>$CH_DIR/user_files/</user_files_path>
    <format_schema_path>$CH_DIR/data/format_schemas/</format_schema_path>
    <mark_cache_size>67108864</mark_cache_size>
    <timezone>$CH_TZ</timezone>
    <users_config>$CH_DIR/config.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <profiles><default/></profiles>
    <quotas><default/></quotas>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <$CH_USER>
            <password>$CH_PASSWORD</password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </$CH_USER>
    </users>
</yandex>
XML
}

start() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "already running, pid $(cat "$PIDFILE")"; return 0
  fi
  install_pkg || return 1
  write_config
  nohup /usr/sbin/clickhouse-server --config-file="$CH_DIR/config.xml" \
    >"$CH_DIR/log/stdout.log" 2>&1 </dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 300); do          # up to 30 s
    if ping_ok; then echo "ClickHouse $(cat "$PIDFILE") ready at $URL"; return 0; fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "ClickHouse failed to start; logs:" >&2
  tail -n 30 "$CH_DIR/log/stdout.log" "$CH_DIR/log/server.err.log" >&2 2>/dev/null || true
  stop || true
  return 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid; pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done   # up to 15 s
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if ping_ok; then echo "up at $URL"; else echo down; exit 1; fi ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
