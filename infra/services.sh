#!/usr/bin/env bash
# Starts, stops and reports the real services tollway runs on: Apache Kafka (KRaft, jars from Maven Central; one
# node, or a cluster of TOLLWAY_KAFKA_BROKERS) and Redis (Debian's redis-server). Idempotent: `up` on a running stack
# is a no-op, and on a cluster with a node down it starts that node only.
#
#   infra/services.sh up|down|status|fetch
#   infra/services.sh kill-kafka [N]                kill -9 broker N (default 1)
#   infra/services.sh stop-broker|pause-broker|resume-broker N   SIGTERM / SIGSTOP / SIGCONT broker N
#   infra/services.sh quorum                        the KRaft quorum: "leader <active controller id>", its voters
#   infra/services.sh credentials                   where the Kafka credentials are, and how a client uses them
#   infra/services.sh acl PREFIX...                 grant the ACLs of topic prefix PREFIX (infra/kafka_acls.py)
#   infra/services.sh rotate-credentials [NAME...]  new passwords for NAME (default: every principal but admin)
#
# Environment (all optional):
#   TOLLWAY_STATE_DIR      where data, logs and pids live        (default: <repo>/.state)
#   TOLLWAY_KAFKA_VERSION  Apache Kafka release                  (default: see KAFKA_VERSION below)
#   TOLLWAY_KAFKA_PORT     broker port on 127.0.0.1              (default: 9092)
#   TOLLWAY_KAFKA_CONTROLLER_PORT  KRaft controller port         (default: TOLLWAY_KAFKA_PORT + 1)
#   TOLLWAY_KAFKA_BROKERS  1 (default) or up to 5: a cluster of that many nodes, each broker and KRaft voter. Node i
#                          (1-based) listens on TOLLWAY_KAFKA_PORT + 10(i-1), its controller on the controller port
#                          + 10(i-1): with 9092, brokers 9092/9102/9112 and controllers 9093/9103/9113. State in
#                          $TOLLWAY_STATE_DIR/kafka-cluster/node-i (the single node's stays in .../kafka). Internal
#                          topics (and topics created without settings) at RF min(3, N), min.insync.replicas RF/2+.
#   TOLLWAY_KAFKA_AUTH     scram: SASL/SCRAM-SHA-512 and ACLs; none: PLAINTEXT, no ACLs (default: scram)
#   TOLLWAY_TOPIC_PREFIX   the prefix `up` grants ACLs for       (default: tollway)
#   TOLLWAY_PYTHON         a Python with aiokafka, for `acl`     (default: <repo>/.venv/bin/python, else python3)
#   TOLLWAY_REDIS_PORT     redis port on 127.0.0.1               (default: 6379)
#   TOLLWAY_KAFKA_START_TIMEOUT_S  how long a node may take to start (default: 120)
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
start_timeout="${TOLLWAY_KAFKA_START_TIMEOUT_S:-120}"
brokers="${TOLLWAY_KAFKA_BROKERS:-1}"
if [ "$brokers" = 1 ]; then kafka_state="$state/kafka"; else kafka_state="$state/kafka-cluster"; fi
kafka_libs="$state/kafka-libs/$KAFKA_VERSION"
redis_state="$state/redis"
auth="${TOLLWAY_KAFKA_AUTH:-scram}"
creds_dir="$state/credentials"
creds_file="$creds_dir/kafka.json"
# Who may connect (the ACLs of each are in infra/kafka_acls.py). admin is the super user and the broker's own.
PRINCIPALS=(admin producer stage-retrieval stage-policy stage-cache stage-model stage-tools stage-postprocess stage-audit stages
            policy-admin ledger auditor backfill)

# Node i of the configured mode: its state directory, ports and the client bootstrap list of all of them.
node_dir() { if [ "$brokers" = 1 ]; then printf '%s' "$kafka_state"; else printf '%s' "$kafka_state/node-$1"; fi; }
node_port() { printf '%s' $((kafka_port + 10 * ($1 - 1))); }
node_cport() { printf '%s' $((controller_port + 10 * ($1 - 1))); }
nodes() { seq 1 "$brokers"; }
bootstrap() { local i out=(); for i in $(nodes); do out+=("127.0.0.1:$(node_port "$i")"); done; (IFS=,; printf '%s' "${out[*]}"); }
replication() { if [ "$brokers" -ge 3 ]; then printf 3; else printf '%s' "$brokers"; fi; }
min_isr() { printf '%s' $(( ($(replication) + 1) / 2 )); }  # RF 1 → 1, 2 → 1, 3 → 2
node_up() { pid_alive "$(node_dir "$1")/kafka.pid" && port_open "$(node_port "$1")"; }

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
    "$here/kafka/ScramAdmin.java" "$(bootstrap)" "$cmd" "$protocol"
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
  TOLLWAY_BOOTSTRAP_SERVERS="$(bootstrap)" TOLLWAY_KAFKA_CREDENTIALS_FILE="$creds_file" \
    "$py" "$here/kafka_acls.py" grant "$@"
}

kafka_up() {
  local i down=0
  for i in $(nodes); do
    node_up "$i" && continue
    down=1
    if port_open "$(node_port "$i")"; then
      die "port $(node_port "$i") is taken by another process; stop it (make down) or set TOLLWAY_KAFKA_PORT"
    fi
  done
  if [ $down = 0 ]; then say "kafka already running on $(bootstrap)"; return 0; fi
  require_java
  fetch_kafka
  mkdir -p "$kafka_state/logs"
  # The SCRAM credentials of $kafka_state/scram-users are in the metadata log (written at format or by ScramAdmin).
  local formatted=0 missing=() name
  [ -f "$(node_dir 1)/data/meta.properties" ] && formatted=1
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
      stop_kafka
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
    # One node: a dynamic quorum of itself (--standalone). A cluster: every node formatted with the same cluster id
    # and credentials; its static quorum (controller.quorum.voters) needs no initial-controllers flag.
    local quorum=(--standalone)
    [ "$brokers" = 1 ] || quorum=()
    for i in $(nodes); do
      kafka_java kafka.tools.StorageTool format "${quorum[@]}" -t "$cluster_id" "${scram[@]}" \
        -c "$(node_dir "$i")/server.properties" >"$kafka_state/logs/format.log" 2>&1 \
        || { cat "$kafka_state/logs/format.log" >&2; die "formatting Kafka storage of node $i failed"; }
    done
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

render_server_properties() {  # render_server_properties none|scram: every node's server.properties
  local protocol=PLAINTEXT i dir quorum voters=()
  [ "$1" = scram ] && protocol=SASL_PLAINTEXT
  for i in $(nodes); do voters+=("$i@127.0.0.1:$(node_cport "$i")"); done
  for i in $(nodes); do
    dir=$(node_dir "$i")
    mkdir -p "$dir/logs"
    if [ "$brokers" = 1 ]; then quorum="controller.quorum.bootstrap.servers=127.0.0.1:$controller_port"
    else quorum="controller.quorum.voters=$(IFS=,; printf '%s' "${voters[*]}")"; fi
    (umask 077
     sed -e "s#@STATE@#$dir#g" -e "s#@PORT@#$(node_port "$i")#g" -e "s#@CONTROLLER_PORT@#$(node_cport "$i")#g" \
         -e "s#@NODE_ID@#$i#g" -e "s#@QUORUM@#$quorum#g" -e "s#@RF@#$(replication)#g" -e "s#@MIN_ISR@#$(min_isr)#g" \
         -e "s#@CLIENT_PROTOCOL@#$protocol#g" -e "s#@CONTROLLER_PROTOCOL@#$protocol#g" \
         "$here/kafka/server.properties.in" >"$dir/server.properties"
     if [ "$1" = scram ]; then
       sed -e "s#@ADMIN_PASSWORD@#${CREDS[admin]}#g" "$here/kafka/sasl.properties.in" >>"$dir/server.properties"
     fi)
    chmod 600 "$dir/server.properties"
  done
}

launch_node() {  # launch_node I: start node I in the background (its log's "started" line comes from this start)
  local dir heap=(-Xms256m -Xmx768m)
  dir=$(node_dir "$1")
  [ "$brokers" = 1 ] || heap=(-Xms128m -Xmx512m)  # three JVMs on a small machine
  [ -f "$dir/logs/server.log" ] && mv -f "$dir/logs/server.log" "$dir/logs/server.log.1"
  nohup java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$dir/logs" \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -cp "$kafka_libs/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/kafka.pid"
}

await_node() {  # await_node I: until node I serves clients (a cluster's first start needs a quorum: all launch first)
  local dir port
  dir=$(node_dir "$1") port=$(node_port "$1")
  for _ in $(seq 1 $((start_timeout * 2))); do
    if port_open "$port" && grep -q "Kafka Server started\|started (kafka.server" "$dir/logs/server.log" 2>/dev/null; then
      return 0
    fi
    pid_alive "$dir/kafka.pid" || { tail -30 "$dir/logs/stdout.log" "$dir/logs/server.log" >&2 2>/dev/null; die "kafka node $1 exited during start"; }
    sleep 0.5
  done
  die "kafka node $1 did not answer on 127.0.0.1:$port within $start_timeout s (log: $dir/logs/server.log)"
}

start_kafka() {  # every node that is not up
  local i started=$SECONDS todo=()
  for i in $(nodes); do node_up "$i" || todo+=("$i"); done
  local where="" mode=none
  for i in "${todo[@]}"; do where+="127.0.0.1:$(node_port "$i") "; done
  grep -q '^authorizer.class.name' "$(node_dir 1)/server.properties" && mode=scram
  say "starting Apache Kafka $KAFKA_VERSION on ${where}(auth: $mode$([ "$brokers" = 1 ] || echo ", node ${todo[*]} of $brokers"))"
  for i in "${todo[@]}"; do launch_node "$i"; done
  for i in "${todo[@]}"; do await_node "$i"; done
  say "kafka up in $((SECONDS - started)) s"
}

stop_kafka() {  # every node of the configured mode
  local i
  for i in $(nodes); do stop_pid "$(node_dir "$i")/kafka.pid" "kafka$([ "$brokers" = 1 ] || echo " node $i")"; done
}

all_kafka_pidfiles() {  # both modes' pid files: `down` stops whichever is running, whatever TOLLWAY_KAFKA_BROKERS says
  local f
  for f in "$state/kafka/kafka.pid" "$state"/kafka-cluster/node-*/kafka.pid; do [ -f "$f" ] && printf '%s\n' "$f"; done
  return 0
}

node_signal() {  # node_signal SIGNAL N
  local n=${2:-}
  [[ "$n" =~ ^[1-9]$ ]] && [ "$n" -le "$brokers" ] || die "expected a broker number 1..$brokers, not '${n}'"
  pid_alive "$(node_dir "$n")/kafka.pid" || die "kafka node $n is not running"
  kill "-$1" "$(cat "$(node_dir "$n")/kafka.pid")"
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
    kill -CONT "$pid" 2>/dev/null || true  # a paused (SIGSTOP) broker must run to act on the TERM
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    say "$name stopped"
  fi
  rm -f "$pidfile"
}

status() {
  local rc=0 i dir mode label f
  for i in $(nodes); do
    dir=$(node_dir "$i") label=kafka
    [ "$brokers" = 1 ] || label="kafka-$i"
    if node_up "$i"; then
      mode=none
      grep -q '^authorizer.class.name' "$dir/server.properties" 2>/dev/null && mode=scram
      echo "$label  up    127.0.0.1:$(node_port "$i")  (Apache Kafka $KAFKA_VERSION, auth $mode, pid $(cat "$dir/kafka.pid")$(
        [ "$brokers" = 1 ] || echo ", controller 127.0.0.1:$(node_cport "$i"), RF $(replication) min ISR $(min_isr)"))"
    else echo "$label  down"; rc=1; fi
  done
  while IFS= read -r f; do
    [[ "$f" == "$kafka_state"/* ]] && continue
    pid_alive "$f" && echo "note   also running: $(dirname "$f") (pid $(cat "$f")); \`make down\` stops it"
  done < <(all_kafka_pidfiles)
  if pid_alive "$redis_state/redis.pid" && port_open "$redis_port"; then
    echo "redis  up    127.0.0.1:$redis_port  (pid $(cat "$redis_state/redis.pid"))"
  else echo "redis  down"; rc=1; fi
  return $rc
}

rotate_credentials() {  # rotate_credentials [NAME...]
  [ "$auth" = scram ] || die "rotate-credentials needs TOLLWAY_KAFKA_AUTH=scram"
  node_up 1 || die "kafka is not running (infra/services.sh up)"
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
    stop_kafka
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

[[ "$brokers" =~ ^[1-5]$ ]] || die "TOLLWAY_KAFKA_BROKERS must be 1..5, not '$brokers'"
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
  down) while IFS= read -r f; do
          label=kafka node=${f%/kafka.pid}
          [[ "$node" == */node-* ]] && label="kafka node ${node##*-}"
          stop_pid "$f" "$label"
        done < <(all_kafka_pidfiles)
        stop_pid "$redis_state/redis.pid" redis ;;
  kill-kafka) node_signal KILL "${2:-1}" ;;
  stop-broker) node_signal TERM "${2:-}" ;;
  pause-broker) node_signal STOP "${2:-}" ;;
  resume-broker) node_signal CONT "${2:-}" ;;
  quorum) creds_load; printf '' | scram_admin quorum "$([ "$auth" = scram ] && echo SASL_PLAINTEXT || echo PLAINTEXT)" ;;
  status) status ;;
  fetch) require_java; fetch_kafka ;;
  *) echo "usage: $0 up|down|status|fetch|kill-kafka [N]|stop-broker N|pause-broker N|resume-broker N|quorum|credentials|acl PREFIX...|rotate-credentials [NAME...]" >&2; exit 2 ;;
esac
