#!/usr/bin/env bash
# Sourced by the test scripts that need npm packages: `npm_ci DIR LABEL` installs DIR's pinned
# packages (package-lock.json) unless node_modules already holds exactly those versions.
# Returns 77 (ctest's "skipped") when node/npm are missing or the install fails (offline).
npm_ci() {
  local dir="$1" label="$2"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "$label: SKIPPED: node and npm are needed"
    return 77
  fi
  # node_modules is current when every locked package is installed at its locked version.
  if (cd "$dir" && node -e '
      const fs = require("fs");
      const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages;
      for (const [where, info] of Object.entries(lock)) {
        if (!where) continue;
        const pkg = JSON.parse(fs.readFileSync(where + "/package.json", "utf8"));
        if (pkg.version !== info.version) process.exit(1);
      }' 2>/dev/null); then
    return 0
  fi
  echo "$label: installing the pinned npm packages (npm ci)"
  if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error); then
    echo "$label: SKIPPED: npm ci failed (offline?)"
    return 77
  fi
}
