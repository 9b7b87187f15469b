# Installs moto (the stand-in for SQS and Step Functions the tests use) into .venv when
# it is not there at the pinned version, and exports MOTO_SERVER. Sourced by
# scripts/test and scripts/chaos.
MOTO_VERSION=5.2.5
if ! .venv/bin/python -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    echo "Installing moto $MOTO_VERSION into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
export MOTO_SERVER="$PWD/.venv/bin/moto_server"
