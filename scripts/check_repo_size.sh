#!/usr/bin/env bash
# Fails when a tracked file over 1 MiB lies outside the places that ship or test data: the package's
# assets (the built-in model, the FID network), the test fixtures and the README's picture.
# Results, runs, engines and images belong outside git (benchmarks/README.md says where).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((1024 * 1024))
allowed='^(python/rissole_trt/assets/|tests/fixtures/|docs/assets/default-grid\.png$)'
status=0
while IFS= read -r -d '' path; do
    [[ -f "$path" ]] || continue  # deleted in the work tree, not yet in the index
    size=$(stat -c %s "$path")
    if (( size > limit )) && ! [[ "$path" =~ $allowed ]]; then
        echo "check_repo_size: $path is $size bytes (> 1 MiB) and is not a shipped asset or fixture" >&2
        status=1
    fi
done < <(git ls-files -z)
exit $status
