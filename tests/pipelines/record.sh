#!/bin/sh
# A pipeline for the end-to-end tests: records its input and when it ran, so a test
# can check that each execution ran once, with its planned input, and never overlapped
# another of its group.
set -eu
input=$(cat)
printf '%s' "$input" > "$RECORD_DIR/$GITDISPATCH_EXECUTION_NAME.input"
echo "start $GITDISPATCH_EXECUTION_NAME $GITDISPATCH_ENVIRONMENT $(date +%s%N)" >> "$RECORD_DIR/events.log"
sleep "${RECORD_SLEEP:-0}"
echo "end $GITDISPATCH_EXECUTION_NAME $GITDISPATCH_ENVIRONMENT $(date +%s%N)" >> "$RECORD_DIR/events.log"
