# Installs into .venv what the tests run beside the project, when it is not there at
# the pinned version: moto (the stand-in for SQS, Step Functions and DynamoDB) and
# cfn-lint (which checks the CloudFormation templates); exports MOTO_SERVER and
# CFN_LINT. Sourced by scripts/test and scripts/chaos.
MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0
if ! .venv/bin/python -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    echo "Installing moto $MOTO_VERSION into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
if [ "$(.venv/bin/cfn-lint --version 2>/dev/null)" != "cfn-lint $CFN_LINT_VERSION" ]; then
    echo "Installing cfn-lint $CFN_LINT_VERSION into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
fi
export MOTO_SERVER="$PWD/.venv/bin/moto_server"
export CFN_LINT="$PWD/.venv/bin/cfn-lint"
