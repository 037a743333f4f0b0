#!/usr/bin/env bash
# System packages the test suite needs beside the Python ones: Debian's chromium (the JupyterLab browser
# test and PDF reports; `playwright install` cannot download here). PostgreSQL is started on demand by
# .ci/postgres.sh. Idempotent; run by `make test` on first use.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq chromium >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
