#!/usr/bin/env bash
# clickhouse-cluster.sh start|stop|status|urls|kill-node N|start-node N|stop-zk|start-zk
# A throw-away replicated and sharded ClickHouse cluster on loopback for tests, CI and examples:
# Debian's zookeeper (standalone) and four clickhouse-server 18.16 nodes, 2 shards x 2 replicas,
# cluster name "stilgar" (doc/scaling.md). Idempotent; installs the packages with apt-get if missing.
# Env: CLUSTER_DIR (default /tmp/stilgar-cluster), CLUSTER_BASE_PORT (default 19100: node N has
#      HTTP BASE+N*10+1, TCP BASE+N*10+2, interserver BASE+N*10+3; ZooKeeper BASE+1),
#      CH_USER/CH_PASSWORD (default collector / collector-test-pw), CH_INSTALL=0 to skip apt-get.
set -euo pipefail
DIR=${CLUSTER_DIR:-/tmp/stilgar-cluster}
BASE=${CLUSTER_BASE_PORT:-19100}
CH_USER=${CH_USER:-collector}
CH_PASSWORD=${CH_PASSWORD:-collector-test-pw}
ZK_PORT=$((BASE + 1))
NODES="1 2 3 4"
shard_of() { echo $(( ($1 + 1) / 2 )); }        # nodes 1,2 -> shard 1; 3,4 -> shard 2
replica_of() { echo "r$(( ($1 + 1) % 2 + 1 ))"; } # r1, r2 within a shard
http_port() { echo $((BASE + $1 * 10 + 1)); }
tcp_port() { echo $((BASE + $1 * 10 + 2)); }
inter_port() { echo $((BASE + $1 * 10 + 3)); }

install_pkgs() {
  local missing=()
  [ -x /usr/sbin/clickhouse-server ] || missing+=(clickhouse-server)
  [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
  [ ${#missing[@]} = 0 ] && return 0
  [ "${CH_INSTALL:-1}" = 1 ] || { echo "missing: ${missing[*]}" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  (
    exec 9>/tmp/clickhouse-server-install.lock
    flock 9 2>/dev/null || true
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  )
}

up() {  # pidfile -> running?
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

zk_ok() {
  local out
  out=$( (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf 'ruok' >&3 && timeout 1 cat <&3) 2>/dev/null || true)
  [ "$out" = "imok" ]
}

start_zk() {
  mkdir -p "$DIR/zk/data"
  up "$DIR/zk/pid" && return 0
  cat > "$DIR/zk/zoo.cfg" <<CFG
tickTime=2000
dataDir=$DIR/zk/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr
maxClientCnxns=0
CFG
  nohup java -Xmx256m -cp "$DIR/zk:/usr/share/java/zookeeper.jar:/usr/share/java/*" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$DIR/zk/zoo.cfg" \
    >"$DIR/zk/stdout.log" 2>&1 </dev/null &
  echo $! > "$DIR/zk/pid"
  for _ in $(seq 1 300); do
    zk_ok && return 0
    up "$DIR/zk/pid" || break
    sleep 0.1
  done
  echo "ZooKeeper failed to start:" >&2; tail -n 20 "$DIR/zk/stdout.log" >&2; return 1
}

stop_pid() {  # pidfile: TERM, wait, KILL
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

remote_servers() {
  local s n
  echo "<remote_servers><stilgar>"
  for s in 1 2; do
    echo "<shard><internal_replication>true</internal_replication>"
    for n in $NODES; do
      [ "$(shard_of "$n")" = "$s" ] || continue
      echo "<replica><host>127.0.0.1</host><port>$(tcp_port "$n")</port><user>$CH_USER</user><password>$CH_PASSWORD</password></replica>"
    done
    echo "</shard>"
  done
  echo "</stilgar></remote_servers>"
}

write_node_config() {
  local n=$1 d="$DIR/node$1"
  mkdir -p "$d"/{data,tmp,log,user_files}
  cat > "$d/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$d/log/server.log</log><errorlog>$d/log/server.err.log</errorlog><size>10M</size><count>1</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$(http_port "$n")</http_port>
    <tcp_port>$(tcp_port "$n")</tcp_port>
    <interserver_http_port>$(inter_port "$n")</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <format_schema_path>$d/data/format_schemas/</format_schema_path>
    <mark_cache_size>67108864</mark_cache_size>
    <timezone>UTC</timezone>
    <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    $(remote_servers)
    <macros><shard>$(shard_of "$n")</shard><replica>$(replica_of "$n")</replica></macros>
    <users_config>$d/config.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <profiles><default/></profiles>
    <quotas><default/></quotas>
    <users>
        <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
        <$CH_USER><password>$CH_PASSWORD</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></$CH_USER>
    </users>
</yandex>
XML
}

node_ok() {
  local out
  out=$(curl -s --max-time 1 "http://127.0.0.1:$(http_port "$1")/ping" 2>/dev/null || true)
  [ "$out" = "Ok." ]
}

start_node() {
  local n=$1 d="$DIR/node$1"
  up "$d/pid" && return 0
  write_node_config "$n"
  nohup /usr/sbin/clickhouse-server --config-file="$d/config.xml" >"$d/log/stdout.log" 2>&1 </dev/null &
  echo $! > "$d/pid"
  for _ in $(seq 1 300); do
    node_ok "$n" && return 0
    up "$d/pid" || break
    sleep 0.1
  done
  echo "ClickHouse node $n failed to start:" >&2
  tail -n 20 "$d/log/stdout.log" "$d/log/server.err.log" >&2 2>/dev/null || true
  return 1
}

urls() {
  local n
  for n in $NODES; do echo "http://127.0.0.1:$(http_port "$n")"; done
}

case "${1:-}" in
  start)
    install_pkgs
    start_zk
    for n in $NODES; do start_node "$n"; done
    echo "cluster 'stilgar' ready: ZooKeeper 127.0.0.1:$ZK_PORT, nodes $(urls | tr '\n' ' ')"
    ;;
  stop)
    for n in $NODES; do stop_pid "$DIR/node$n/pid"; done
    stop_pid "$DIR/zk/pid"
    ;;
  status)
    for n in $NODES; do
      if node_ok "$n"; then echo "node$n up (shard $(shard_of "$n"), replica $(replica_of "$n"))"; else echo "node$n down"; fi
    done
    if zk_ok; then echo "zookeeper up"; else echo "zookeeper down"; fi
    ;;
  urls) urls ;;
  kill-node) [ -f "$DIR/node$2/pid" ] && kill -9 "$(cat "$DIR/node$2/pid")" 2>/dev/null; rm -f "$DIR/node$2/pid" ;;
  start-node) start_node "$2" ;;
  stop-zk) stop_pid "$DIR/zk/pid" ;;
  kill-zk) [ -f "$DIR/zk/pid" ] && kill -9 "$(cat "$DIR/zk/pid")" 2>/dev/null; rm -f "$DIR/zk/pid" ;;
  start-zk) start_zk ;;
  *) echo "usage: $0 start|stop|status|urls|kill-node N|start-node N|stop-zk|kill-zk|start-zk" >&2; exit 2 ;;
esac
