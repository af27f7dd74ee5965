#!/usr/bin/env bash
# Example agent for the `command` target: the event arrives as JSON on stdin.
#   exit 0  success; stdout may report {"run_id": "...", "llm_calls": N}
#   exit 75 retryable failure (the runtime retries with backoff)
#   other   permanent failure (dead-lettered without retries)
# The payload's "mode" field picks the behaviour so the example reaches every outcome.
set -euo pipefail
event=$(cat)
attempt=${QT_ATTEMPT:-1}
case "$event" in
  *'"mode":"fail_twice"'*)
    if [ "$attempt" -le 2 ]; then
      echo "upstream busy (attempt $attempt)" >&2
      exit 75
    fi ;;
  *'"mode":"always_fail"'*)
    echo "upstream unavailable (attempt $attempt)" >&2
    exit 75 ;;
  *'"mode":"permanent"'*)
    echo "order is missing required fields" >&2
    exit 1 ;;
esac
printf '{"run_id":"run-%s-%s","llm_calls":1}\n' "${QT_MESSAGE_ID:-unknown}" "$attempt"
