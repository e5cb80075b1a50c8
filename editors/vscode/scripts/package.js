// Builds sgl-lang-<version>.vsix with vsce (fetched from the npm registry by npx).
// Usage: npm install && npm run package
"use strict";

const { execFileSync } = require("child_process");
const path = require("path");

execFileSync(
  "npx",
  ["--yes", "@vscode/vsce@2", "package", "--allow-missing-repository", "--skip-license"],
  { cwd: path.resolve(__dirname, ".."), stdio: "inherit" },
);
