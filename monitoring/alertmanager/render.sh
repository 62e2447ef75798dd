#!/bin/sh
# Write Alertmanager's config from alertmanager.yml, with the receivers' webhook URLs taken
# from the environment. POSIX sh and sed only, so that it runs in the Alertmanager image
# (busybox) as well as here; the tests render with this same script.
#   render.sh TEMPLATE OUTPUT
set -eu
template=$1
output=$2
for name in MAILRELAY_ALERT_PAGE_URL MAILRELAY_ALERT_TICKET_URL MAILRELAY_ALERT_INFO_URL; do
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "render.sh: $name is not set (the webhook URL of its tier)" >&2
    exit 1
  fi
  case $value in
    http://*|https://*) ;;
    *) echo "render.sh: $name must be an http(s) URL" >&2; exit 1 ;;
  esac
  case $value in
    *"'"*|*"|"*|*"\\"*) echo "render.sh: $name must not contain quotes, | or \\" >&2; exit 1 ;;
  esac
done
sed -e "s|\${MAILRELAY_ALERT_PAGE_URL}|$MAILRELAY_ALERT_PAGE_URL|g" \
    -e "s|\${MAILRELAY_ALERT_TICKET_URL}|$MAILRELAY_ALERT_TICKET_URL|g" \
    -e "s|\${MAILRELAY_ALERT_INFO_URL}|$MAILRELAY_ALERT_INFO_URL|g" \
    "$template" > "$output"
