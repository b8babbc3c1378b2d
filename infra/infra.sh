#!/usr/bin/env bash
# Local infrastructure without Docker: a real Apache Kafka broker (KRaft, combined broker and
# controller) run from JARs that Maven fetches from Maven Central, and Debian's redis-server.
#
#   infra/infra.sh up       fetch what is missing, start what is not answering, wait for both
#   infra/infra.sh down     stop what this script started
#   infra/infra.sh status   say what answers
#   infra/infra.sh reset    stop Kafka and delete its log directory (every topic and offset)
#
# Idempotent: a second `up` finds both answering and changes nothing. The JARs, the KRaft log
# directory and the process logs live under $STREAMLEARN_HOME (default ~/.cache/streamlearn),
# outside the repository.
#
# With CI=true, a broker that is not already running starts from an empty log directory: a CI run
# is a fresh machine, and a log directory left by an earlier run that was killed can hold
# thousands of test partitions whose recovery takes minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
home=${STREAMLEARN_HOME:-$HOME/.cache/streamlearn}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka-pom.xml")
host=127.0.0.1
kafka_port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
redis_port=${REDIS_PORT:-6379}
libs=$home/kafka-$kafka_version/libs
run=$home/run
kafka_data=$run/kafka-$kafka_port
redis_dir=$run/redis-$redis_port

log() { printf '[infra] %s\n' "$*" >&2; }

answers() { # host port: true when something accepts TCP connections there
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 2; i++)); do
    answers "$2" "$3" && return 0
    sleep 0.5
  done
  log "$1 did not answer on $2:$3 within $4 s"
  return 1
}

apt_install() { # debian packages
  log "installing Debian's $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "$@" >/dev/null
}

fetch_kafka() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || apt_install maven
  log "fetching Apache Kafka $kafka_version JARs from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  if ! mvn -B -f "$here/kafka-pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >"$home/maven.log" 2>&1; then
    tail -n 30 "$home/maven.log" >&2
    log "maven could not fetch the broker: see $home/maven.log"
    exit 1
  fi
  touch "$libs/.complete"
}

java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$here/log4j2.properties" -cp "$libs/*")

kafka_up() {
  if answers $host "$kafka_port"; then
    log "kafka already answers on $host:$kafka_port"
    return 0
  fi
  fetch_kafka
  if [ "${CI:-}" = true ] && [ -d "$kafka_data/logs" ]; then
    log "CI=true: starting kafka from an empty log directory"
    rm -rf "$kafka_data/logs"
  fi
  mkdir -p "$kafka_data"
  local props=$kafka_data/server.properties
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$host:$controller_port
listeners=PLAINTEXT://$host:$kafka_port,CONTROLLER://$host:$controller_port
advertised.listeners=PLAINTEXT://$host:$kafka_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$kafka_data/logs
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
  if [ ! -f "$kafka_data/logs/meta.properties" ]; then
    log "formatting KRaft storage in $kafka_data/logs"
    local cluster_id
    cluster_id=$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid)
    java "${java_opts[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$props" >/dev/null
  fi
  log "starting kafka $kafka_version on $host:$kafka_port"
  nohup java "${java_opts[@]}" kafka.Kafka "$props" >"$kafka_data/server.log" 2>&1 &
  local pid=$! i
  echo $pid >"$kafka_data/pid"
  # Recovering a log directory after an unclean stop takes a while per partition, so wait as long
  # as the broker is alive and making progress, and stop at once if it dies.
  for ((i = 0; i < 1200; i++)); do
    answers $host "$kafka_port" && return 0
    if ! kill -0 $pid 2>/dev/null; then
      tail -n 40 "$kafka_data/server.log" >&2
      log "kafka exited before answering: see $kafka_data/server.log"
      exit 1
    fi
    ((i % 60 == 59)) && log "kafka is still starting ($((i / 2 + 1)) s): $(recovery_progress)"
    sleep 0.5
  done
  tail -n 40 "$kafka_data/server.log" >&2
  log "kafka did not answer on $host:$kafka_port within 600 s"
  exit 1
}

recovery_progress() { # the broker's last log line, which names the step it is on
  tail -n 1 "$kafka_data/server.log" | cut -c1-160
}

redis_up() {
  if answers $host "$redis_port"; then
    log "redis already answers on $host:$redis_port"
    return 0
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$redis_dir"
  log "starting redis on $host:$redis_port"
  redis-server --bind $host --port "$redis_port" --dir "$redis_dir" --daemonize yes \
    --pidfile "$redis_dir/pid" --logfile "$redis_dir/server.log" --save "" --appendonly no
  wait_for redis $host "$redis_port" 30
}

stop_pidfile() { # name pidfile
  [ -f "$2" ] || return 0
  local pid
  pid=$(cat "$2")
  if kill "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$2"
}

status() {
  local k=down r=down
  answers $host "$kafka_port" && k=up
  answers $host "$redis_port" && r=up
  echo "kafka $host:$kafka_port $k"
  echo "redis $host:$redis_port $r"
  [ $k = up ] && [ $r = up ]
}

case ${1:-} in
  up) redis_up; kafka_up; status ;;
  down) stop_pidfile kafka "$kafka_data/pid"; stop_pidfile redis "$redis_dir/pid" ;;
  reset) stop_pidfile kafka "$kafka_data/pid"; rm -rf "$kafka_data/logs"; log "deleted $kafka_data/logs" ;;
  status) status ;;
  fetch) fetch_kafka ;;
  browser) # the dashboard's browser test drives Debian's Chromium through its ChromeDriver
    { command -v chromium && command -v chromedriver; } >/dev/null || apt_install chromium chromium-driver ;;
  prometheus) # make observe, and the test that every dashboard query returns data
    { command -v prometheus && command -v promtool; } >/dev/null || apt_install prometheus ;;
  *) echo "usage: $0 up|down|status|reset|fetch|browser|prometheus" >&2; exit 2 ;;
esac
