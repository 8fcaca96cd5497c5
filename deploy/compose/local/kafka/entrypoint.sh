#!/bin/bash
# server.properties from the KAFKA_* variables, the storage formatted once, then the broker.
set -euo pipefail
conf=/tmp/server.properties
: > "$conf"
for var in $(compgen -e | grep '^KAFKA_' | grep -v -e '^KAFKA_HEAP_OPTS$' -e '^KAFKA_CLUSTER_ID$'); do
  key=$(echo "${var#KAFKA_}" | tr 'A-Z_' 'a-z.')
  echo "$key=${!var}" >> "$conf"
done
grep -q '^log.dirs=' "$conf" || echo "log.dirs=/var/lib/kafka/data" >> "$conf"
java=(java ${KAFKA_HEAP_OPTS:--Xmx768m} -XX:TieredStopAtLevel=1 -Dlog4j.configuration=file:/opt/kafka/log4j.properties -cp "/opt/kafka/libs/*")
dir=$(sed -n 's/^log.dirs=//p' "$conf")
if [[ ! -f $dir/meta.properties ]]; then
  id=${KAFKA_CLUSTER_ID:-}
  while [[ -z $id || $id == -* ]]; do  # a random id as Kafka draws it (never one the tool reads as an option)
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  "${java[@]}" kafka.tools.StorageTool format -t "$id" -c "$conf"
fi
exec "${java[@]}" kafka.Kafka "$conf"
