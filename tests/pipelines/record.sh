#!/bin/sh
# A pipeline for the end-to-end tests: records its input and when it ran, so a test
# can check that each execution ran to its end, with its planned input, and never
# overlapped another of its lane. While it runs it writes a tick every 0.1 s: a
# process that outlived its daemon shows in the ticks it keeps writing.
#
# Lines of $RECORD_DIR/events.log: <start|tick|end> <run name> <planned name> <environment> <ns>
set -eu
input=$(cat)
printf '%s' "$input" > "$RECORD_DIR/$GITDISPATCH_PLANNED_NAME.input"
line() {
    echo "$1 $GITDISPATCH_EXECUTION_NAME $GITDISPATCH_PLANNED_NAME $GITDISPATCH_ENVIRONMENT $(date +%s%N)" >> "$RECORD_DIR/events.log"
}
line start
end=$(( $(date +%s%N) + $(awk "BEGIN { printf \"%d\", ${RECORD_SLEEP:-0} * 1000000000 }") ))
while [ "$(date +%s%N)" -lt "$end" ]; do
    sleep 0.1
    line tick
done
line end
