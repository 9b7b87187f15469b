#!/bin/sh
# The sample pipeline for the local executor. gitdispatch gives the execution input
# as JSON on stdin and names the execution in the environment; event data (branch
# names, commit messages) only ever arrives as that data, never as arguments.
set -eu
input=$(cat)
echo "execution ${GITDISPATCH_EXECUTION_NAME:-?} of pipeline ${GITDISPATCH_PIPELINE:-?} for ${GITDISPATCH_ENVIRONMENT:-?}"
printf '%s\n' "$input"
