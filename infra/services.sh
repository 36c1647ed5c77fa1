#!/usr/bin/env bash
# Starts, stops and reports the real services tollway runs on: Apache Kafka (single-node KRaft, jars from Maven
# Central) and Redis (Debian's redis-server). Idempotent: `up` on a running stack is a no-op.
#
#   infra/services.sh up|down|status|wait
#
# Environment (all optional):
#   TOLLWAY_STATE_DIR      where data, logs and pids live        (default: <repo>/.state)
#   TOLLWAY_KAFKA_VERSION  Apache Kafka release                  (default: see KAFKA_VERSION below)
#   TOLLWAY_KAFKA_PORT     broker port on 127.0.0.1              (default: 9092)
#   TOLLWAY_REDIS_PORT     redis port on 127.0.0.1               (default: 6379)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
state="${TOLLWAY_STATE_DIR:-$repo/.state}"
# Newest 4.x that aiokafka 0.14 and faust-streaming 0.15 were verified against (see README, "Kafka version").
KAFKA_VERSION="${TOLLWAY_KAFKA_VERSION:-4.4.0}"
kafka_port="${TOLLWAY_KAFKA_PORT:-9092}"
controller_port="${TOLLWAY_KAFKA_CONTROLLER_PORT:-$((kafka_port + 1))}"
redis_port="${TOLLWAY_REDIS_PORT:-6379}"
kafka_state="$state/kafka"
kafka_libs="$state/kafka-libs/$KAFKA_VERSION"
redis_state="$state/redis"

say() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

require_java() {
  command -v java >/dev/null || die "Java 17+ is required for Apache Kafka (Debian: apt-get install openjdk-17-jre-headless)"
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${major:-0}" -ge 17 ] || die "Java 17+ is required for Apache Kafka 4.x; found Java ${major:-unknown}"
}

fetch_kafka() {
  [ -f "$kafka_libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven is required to fetch Apache Kafka's jars (Debian: apt-get install maven)"
  say "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $kafka_libs"
  rm -rf "$kafka_libs"; mkdir -p "$kafka_libs"
  if ! mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$kafka_libs" \
      >"$state/mvn.log" 2>&1; then
    tail -20 "$state/mvn.log" >&2
    die "could not resolve Apache Kafka $KAFKA_VERSION from Maven Central (is it reachable? log: $state/mvn.log)"
  fi
  touch "$kafka_libs/.complete"
}

kafka_java() {
  java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$kafka_state/logs" \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -cp "$kafka_libs/*" "$@"
}

kafka_up() {
  if pid_alive "$kafka_state/kafka.pid" && port_open "$kafka_port"; then
    say "kafka already running on 127.0.0.1:$kafka_port"; return 0
  fi
  if port_open "$kafka_port"; then
    die "port $kafka_port is taken by another process; stop it or set TOLLWAY_KAFKA_PORT"
  fi
  require_java
  fetch_kafka
  mkdir -p "$kafka_state/logs"
  sed -e "s#@STATE@#$kafka_state#g" -e "s#@PORT@#$kafka_port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" \
    "$here/kafka/server.properties.in" >"$kafka_state/server.properties"
  if [ ! -f "$kafka_state/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid)
    say "formatting KRaft storage (cluster $cluster_id)"
    kafka_java kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$kafka_state/server.properties" >"$kafka_state/logs/format.log" 2>&1 \
      || { cat "$kafka_state/logs/format.log" >&2; die "formatting Kafka storage failed"; }
  fi
  say "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$kafka_port"
  local started=$SECONDS
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$kafka_state/logs" \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -cp "$kafka_libs/*" kafka.Kafka "$kafka_state/server.properties" \
    >"$kafka_state/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$kafka_state/kafka.pid"
  for _ in $(seq 1 240); do
    if port_open "$kafka_port" && grep -q "Kafka Server started\|started (kafka.server" "$kafka_state/logs/server.log" 2>/dev/null; then
      say "kafka up in $((SECONDS - started)) s"; return 0
    fi
    pid_alive "$kafka_state/kafka.pid" || { tail -30 "$kafka_state/logs/stdout.log" "$kafka_state/logs/server.log" >&2 2>/dev/null; die "kafka exited during start"; }
    sleep 0.5
  done
  die "kafka did not answer on 127.0.0.1:$kafka_port within 120 s (log: $kafka_state/logs/server.log)"
}

redis_up() {
  if pid_alive "$redis_state/redis.pid" && port_open "$redis_port"; then
    say "redis already running on 127.0.0.1:$redis_port"; return 0
  fi
  if port_open "$redis_port"; then
    die "port $redis_port is taken by another process; stop it or set TOLLWAY_REDIS_PORT"
  fi
  if ! command -v redis-server >/dev/null; then
    command -v apt-get >/dev/null || die "redis-server is missing and apt-get is not available to install it"
    say "installing redis-server with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >"$state/apt.log" 2>&1 \
      || { tail -20 "$state/apt.log" >&2; die "apt-get install redis-server failed"; }
  fi
  mkdir -p "$redis_state"
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$redis_state" --daemonize yes \
    --pidfile "$redis_state/redis.pid" --logfile "$redis_state/redis.log" \
    --save "" --appendonly no >/dev/null
  for _ in $(seq 1 100); do
    port_open "$redis_port" && { say "redis up on 127.0.0.1:$redis_port"; return 0; }
    sleep 0.1
  done
  die "redis did not start (log: $redis_state/redis.log)"
}

stop_pid() {
  local pidfile=$1 name=$2
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    say "$name stopped"
  fi
  rm -f "$pidfile"
}

status() {
  local rc=0
  if pid_alive "$kafka_state/kafka.pid" && port_open "$kafka_port"; then
    echo "kafka  up    127.0.0.1:$kafka_port  (Apache Kafka $KAFKA_VERSION, pid $(cat "$kafka_state/kafka.pid"))"
  else echo "kafka  down"; rc=1; fi
  if pid_alive "$redis_state/redis.pid" && port_open "$redis_port"; then
    echo "redis  up    127.0.0.1:$redis_port  (pid $(cat "$redis_state/redis.pid"))"
  else echo "redis  down"; rc=1; fi
  return $rc
}

mkdir -p "$state"
case "${1:-}" in
  up) redis_up; kafka_up ;;
  down) stop_pid "$kafka_state/kafka.pid" kafka; stop_pid "$redis_state/redis.pid" redis ;;
  kill-kafka) pid_alive "$kafka_state/kafka.pid" && kill -9 "$(cat "$kafka_state/kafka.pid")" ;;
  status) status ;;
  fetch) require_java; fetch_kafka ;;
  *) echo "usage: $0 up|down|status|fetch|kill-kafka" >&2; exit 2 ;;
esac
