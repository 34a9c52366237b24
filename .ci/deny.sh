#!/usr/bin/env bash
# Dependency policy (.ci/deny.toml) with cargo-deny: licences, banned and duplicate crates,
# sources (crates.io only). Needs only `cargo metadata`, not a build.
# The advisories check is off by default: it clones github.com/rustsec/advisory-db, and GitHub
# is unreachable from our CI machines. Where GitHub is reachable, run it as well with
#   DENY_ADVISORIES=1 .ci/deny.sh
# The pinned cargo-deny is built once (a few minutes) into target/tools and reused after.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
tools=$(realpath -m "${CARGO_TARGET_DIR:-target}/tools")

if [ "$("$tools/bin/cargo-deny" --version 2>/dev/null)" != "cargo-deny $version" ]; then
  # Built in cargo's own temporary directory: its 300 MB of artefacts are not worth keeping.
  # Unoptimised: it then builds in 2.8 CPU-minutes instead of 6.6, and its check of our
  # dependency graph still takes about 2 s (measured on a 2-core Zen 3).
  env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo install --locked --quiet cargo-deny --version "$version" --root "$tools"
fi
[ "${SETUP_ONLY:-}" = 1 ] && exit 0  # .ci/run builds it ahead, beside the other builds

checks=(licenses bans sources)
[ "${DENY_ADVISORIES:-}" = 1 ] && checks+=(advisories)
# cargo-deny's global options (--locked, --manifest-path, --config) go before `check`.
PATH="$tools/bin:$PATH" cargo deny --locked --manifest-path Cargo.toml --config .ci/deny.toml \
  check "${checks[@]}"
