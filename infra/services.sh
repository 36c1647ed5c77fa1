#!/usr/bin/env bash
# Starts, stops and reports the real services tollway runs on: Apache Kafka (single-node KRaft, jars from Maven
# Central) and Redis (Debian's redis-server). Idempotent: `up` on a running stack is a no-op.
#
#   infra/services.sh up|down|status|fetch|kill-kafka
#   infra/services.sh credentials                   where the Kafka credentials are, and how a client uses them
#   infra/services.sh acl PREFIX...                 grant the ACLs of topic prefix PREFIX (infra/kafka_acls.py)
#   infra/services.sh rotate-credentials [NAME...]  new passwords for NAME (default: every principal but admin)
#
# Environment (all optional):
#   TOLLWAY_STATE_DIR      where data, logs and pids live        (default: <repo>/.state)
#   TOLLWAY_KAFKA_VERSION  Apache Kafka release                  (default: see KAFKA_VERSION below)
#   TOLLWAY_KAFKA_PORT     broker port on 127.0.0.1              (default: 9092)
#   TOLLWAY_KAFKA_AUTH     scram: SASL/SCRAM-SHA-512 and ACLs; none: PLAINTEXT, no ACLs (default: scram)
#   TOLLWAY_TOPIC_PREFIX   the prefix `up` grants ACLs for       (default: tollway)
#   TOLLWAY_PYTHON         a Python with aiokafka, for `acl`     (default: <repo>/.venv/bin/python, else python3)
#   TOLLWAY_REDIS_PORT     redis port on 127.0.0.1               (default: 6379)
#
# With TOLLWAY_KAFKA_AUTH=scram, the first `up` generates a random password for each principal below into
# $TOLLWAY_STATE_DIR/credentials/kafka.json (mode 600, {"principal": "password"}) and writes them into the KRaft
# metadata at format time; clients connect with security_protocol=SASL_PLAINTEXT, sasl_mechanism=SCRAM-SHA-512.
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
auth="${TOLLWAY_KAFKA_AUTH:-scram}"
creds_dir="$state/credentials"
creds_file="$creds_dir/kafka.json"
# Who may connect (the ACLs of each are in infra/kafka_acls.py). admin is the super user and the broker's own.
PRINCIPALS=(admin producer stage-retrieval stage-policy stage-cache stage-model stage-tools stage-postprocess stage-audit stages
            policy-admin ledger auditor backfill)

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

# ---- credentials -------------------------------------------------------------------------------------------------
# kafka.json is written by this script only: one `"name": "password",` line per principal, passwords [A-Za-z0-9].
new_password() { local p; p=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32) || true; printf '%s' "$p"; }

cred_get() {  # cred_get NAME: the password, or nothing
  [ -f "$creds_file" ] || return 0
  sed -n "s/^ *\"$1\": *\"\([A-Za-z0-9]*\)\",\{0,1\} *\$/\1/p" "$creds_file" | head -1
}

declare -A CREDS=()
creds_load() {
  CREDS=()
  local name
  for name in "${PRINCIPALS[@]}"; do CREDS[$name]=$(cred_get "$name"); done
  # Principals somebody added to the file by hand are kept.
  if [ -f "$creds_file" ]; then
    while IFS= read -r name; do [ -n "$name" ] && CREDS[$name]=$(cred_get "$name"); done \
      < <(sed -n 's/^ *"\([^"]*\)": *"[A-Za-z0-9]*",\{0,1\} *$/\1/p' "$creds_file")
  fi
}

creds_write() {  # atomically replace kafka.json with CREDS (mode 600, directory 700)
  (umask 077; mkdir -p "$creds_dir")
  chmod 700 "$creds_dir"
  local tmp="$creds_file.tmp.$$" name first=1 ordered=()
  for name in "${PRINCIPALS[@]}"; do ordered+=("$name"); done
  for name in $(printf '%s\n' "${!CREDS[@]}" | sort); do
    [[ " ${PRINCIPALS[*]} " == *" $name "* ]] || ordered+=("$name")
  done
  (umask 077
   { printf '{\n'
     for name in "${ordered[@]}"; do
       [ $first = 1 ] || printf ',\n'
       first=0
       printf '  "%s": "%s"' "$name" "${CREDS[$name]}"
     done
     printf '\n}\n'; } >"$tmp")
  chmod 600 "$tmp"
  mv -f "$tmp" "$creds_file"
}

ensure_credentials() {  # every principal has a password in kafka.json; prints the names that were just created
  creds_load
  local name created=()
  for name in "${PRINCIPALS[@]}"; do
    if [ -z "${CREDS[$name]}" ]; then CREDS[$name]=$(new_password); created+=("$name"); fi
  done
  if [ ${#created[@]} -gt 0 ]; then
    creds_write
    say "generated Kafka credentials for ${created[*]} in $creds_file"
  fi
  [ "$(stat -c %a "$creds_file")" = 600 ] || chmod 600 "$creds_file"
  printf '%s\n' "${created[@]}"
}

# scram_admin upsert|list PROTOCOL < "name password" lines: infra/kafka/ScramAdmin.java as admin on the broker.
scram_admin() {
  local cmd=$1 protocol=$2
  { printf '%s\n' "${CREDS[admin]}"; cat; } | kafka_java -Dtollway.kafka.loglevel=ERROR \
    "$here/kafka/ScramAdmin.java" "127.0.0.1:$kafka_port" "$cmd" "$protocol"
}

python_with_aiokafka() {
  local py="${TOLLWAY_PYTHON:-}"
  if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py=python3; fi
  fi
  "$py" -c 'import aiokafka' 2>/dev/null || return 1
  printf '%s' "$py"
}

grant_acls() {  # grant_acls PREFIX...: the ACL table of infra/kafka_acls.py for each prefix, as admin
  local py
  py=$(python_with_aiokafka) || die "granting ACLs needs a Python with aiokafka (set TOLLWAY_PYTHON, or make venv)"
  TOLLWAY_BOOTSTRAP_SERVERS="127.0.0.1:$kafka_port" TOLLWAY_KAFKA_CREDENTIALS_FILE="$creds_file" \
    "$py" "$here/kafka_acls.py" grant "$@"
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
  # The SCRAM credentials of $kafka_state/scram-users are in the metadata log (written at format or by ScramAdmin).
  local formatted=0 missing=() name
  [ -f "$kafka_state/data/meta.properties" ] && formatted=1
  if [ "$auth" = scram ]; then
    ensure_credentials >/dev/null
    creds_load
    for name in "${!CREDS[@]}"; do
      grep -qx "$name" "$kafka_state/scram-users" 2>/dev/null || missing+=("$name")
    done
    if [ $formatted = 1 ] && [[ " ${missing[*]} " == *" admin "* ]]; then
      # Formatted without SCRAM (TOLLWAY_KAFKA_AUTH=none before): nobody could authenticate. Start once without
      # authentication to write the credentials through the Admin API, then restart with SCRAM.
      say "this Kafka state has no SCRAM credentials yet: adding them (one start without authentication)"
      render_server_properties none
      start_kafka
      printf '%s\n' "${missing[@]}" | while read -r name; do printf '%s %s\n' "$name" "${CREDS[$name]}"; done \
        | scram_admin upsert PLAINTEXT >/dev/null || die "could not write SCRAM credentials (log: $kafka_state/logs)"
      printf '%s\n' "${missing[@]}" >>"$kafka_state/scram-users"
      missing=()
      stop_pid "$kafka_state/kafka.pid" kafka
    fi
  fi
  render_server_properties "$auth"
  if [ $formatted = 0 ]; then
    local cluster_id scram=()
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid)
    say "formatting KRaft storage (cluster $cluster_id, auth $auth)"
    rm -f "$kafka_state/scram-users"
    if [ "$auth" = scram ]; then
      for name in "${missing[@]}"; do scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=${CREDS[$name]}]"); done
    fi
    kafka_java kafka.tools.StorageTool format --standalone -t "$cluster_id" "${scram[@]}" \
      -c "$kafka_state/server.properties" >"$kafka_state/logs/format.log" 2>&1 \
      || { cat "$kafka_state/logs/format.log" >&2; die "formatting Kafka storage failed"; }
    [ "$auth" = scram ] && printf '%s\n' "${missing[@]}" >"$kafka_state/scram-users"
    missing=()
  fi
  start_kafka
  if [ "$auth" = scram ]; then
    if [ ${#missing[@]} -gt 0 ]; then  # principals added to the list (or the file) after the format
      printf '%s\n' "${missing[@]}" | while read -r name; do printf '%s %s\n' "$name" "${CREDS[$name]}"; done \
        | scram_admin upsert SASL_PLAINTEXT >/dev/null || die "could not add SCRAM credentials for ${missing[*]}"
      printf '%s\n' "${missing[@]}" >>"$kafka_state/scram-users"
      say "added SCRAM credentials for ${missing[*]}"
    fi
    if python_with_aiokafka >/dev/null; then
      grant_acls "${TOLLWAY_TOPIC_PREFIX:-tollway}" >/dev/null
    else
      say "warning: no Python with aiokafka; ACLs for prefix ${TOLLWAY_TOPIC_PREFIX:-tollway} not granted (run: $0 acl PREFIX)"
    fi
  fi
}

render_server_properties() {  # render_server_properties none|scram
  local protocol=PLAINTEXT
  [ "$1" = scram ] && protocol=SASL_PLAINTEXT
  (umask 077
   sed -e "s#@STATE@#$kafka_state#g" -e "s#@PORT@#$kafka_port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" \
       -e "s#@CLIENT_PROTOCOL@#$protocol#g" -e "s#@CONTROLLER_PROTOCOL@#$protocol#g" \
       "$here/kafka/server.properties.in" >"$kafka_state/server.properties"
   if [ "$1" = scram ]; then
     sed -e "s#@ADMIN_PASSWORD@#${CREDS[admin]}#g" "$here/kafka/sasl.properties.in" >>"$kafka_state/server.properties"
   fi)
  chmod 600 "$kafka_state/server.properties"
}

start_kafka() {
  say "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$kafka_port (auth: $(grep -q '^authorizer.class.name' \
    "$kafka_state/server.properties" && echo scram || echo none))"
  local started=$SECONDS
  # "Kafka Server started" below must come from this start, not an earlier one.
  [ -f "$kafka_state/logs/server.log" ] && mv -f "$kafka_state/logs/server.log" "$kafka_state/logs/server.log.1"
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
    local mode=none
    grep -q '^authorizer.class.name' "$kafka_state/server.properties" 2>/dev/null && mode=scram
    echo "kafka  up    127.0.0.1:$kafka_port  (Apache Kafka $KAFKA_VERSION, auth $mode, pid $(cat "$kafka_state/kafka.pid"))"
  else echo "kafka  down"; rc=1; fi
  if pid_alive "$redis_state/redis.pid" && port_open "$redis_port"; then
    echo "redis  up    127.0.0.1:$redis_port  (pid $(cat "$redis_state/redis.pid"))"
  else echo "redis  down"; rc=1; fi
  return $rc
}

rotate_credentials() {  # rotate_credentials [NAME...]
  [ "$auth" = scram ] || die "rotate-credentials needs TOLLWAY_KAFKA_AUTH=scram"
  pid_alive "$kafka_state/kafka.pid" && port_open "$kafka_port" || die "kafka is not running (infra/services.sh up)"
  creds_load
  local names=("$@") name lines="" restart=0
  if [ ${#names[@]} -eq 0 ]; then
    for name in "${!CREDS[@]}"; do [ "$name" = admin ] || names+=("$name"); done
  fi
  declare -A fresh=()
  for name in "${names[@]}"; do
    [ -n "${CREDS[$name]+x}" ] || die "unknown principal '$name' (known: ${!CREDS[*]})"
    fresh[$name]=$(new_password)
    lines+="$name ${fresh[$name]}"$'\n'
    [ "$name" = admin ] && restart=1
  done
  # The broker first, then the file: a client that reads the file gets a password the broker already takes.
  # Connections authenticated before stay up (no re-authentication unless connections.max.reauth.ms is set).
  local started=$SECONDS
  printf '%s' "$lines" | scram_admin upsert SASL_PLAINTEXT >/dev/null || die "the broker refused the new credentials"
  for name in "${names[@]}"; do CREDS[$name]=${fresh[$name]}; done
  creds_write
  say "rotated ${names[*]} in $((SECONDS - started)) s; $creds_file updated"
  if [ $restart = 1 ]; then
    # The broker authenticates itself (inter-broker SCRAM, controller PLAIN) with admin's password from
    # server.properties, which it reads only at start.
    say "admin rotated: restarting kafka so the broker uses the new password itself"
    stop_pid "$kafka_state/kafka.pid" kafka
    kafka_up
  fi
}

show_credentials() {
  if [ "$auth" != scram ]; then
    echo "TOLLWAY_KAFKA_AUTH=$auth: Kafka takes PLAINTEXT connections without credentials"; return 0
  fi
  [ -f "$creds_file" ] || die "no credentials yet: $creds_file is written by the first 'infra/services.sh up'"
  creds_load
  echo "$creds_file"
  echo "principals: $(printf '%s\n' "${!CREDS[@]}" | sort | tr '\n' ' ')"
  echo "clients: security_protocol=SASL_PLAINTEXT sasl_mechanism=SCRAM-SHA-512 sasl_plain_username=<principal>" \
       "sasl_plain_password=<its value in the file>"
}

case "$auth" in
  scram|none) ;;
  *) die "TOLLWAY_KAFKA_AUTH must be scram or none, not '$auth'" ;;
esac
mkdir -p "$state"
case "${1:-}" in
  up) redis_up; kafka_up ;;
  credentials) show_credentials ;;
  acl) shift; [ $# -gt 0 ] || die "usage: $0 acl PREFIX..."; [ "$auth" = scram ] || die "acl needs TOLLWAY_KAFKA_AUTH=scram"
       grant_acls "$@" ;;
  rotate-credentials) shift; rotate_credentials "$@" ;;
  down) stop_pid "$kafka_state/kafka.pid" kafka; stop_pid "$redis_state/redis.pid" redis ;;
  kill-kafka) pid_alive "$kafka_state/kafka.pid" && kill -9 "$(cat "$kafka_state/kafka.pid")" ;;
  status) status ;;
  fetch) require_java; fetch_kafka ;;
  *) echo "usage: $0 up|down|status|fetch|kill-kafka|credentials|acl PREFIX...|rotate-credentials [NAME...]" >&2; exit 2 ;;
esac
