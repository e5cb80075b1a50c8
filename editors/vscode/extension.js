// The SGL extension: the grammar, snippets and language configuration are declarative
// (package.json); this file only starts the language server, `sgl lsp`, when `sgl` is found.
"use strict";

const { execFileSync } = require("child_process");
const vscode = require("vscode");

let client = null;

function findServer(command) {
  try {
    execFileSync(command, ["lsp", "--help"], { stdio: "ignore", timeout: 15000 });
    return true;
  } catch (error) {
    return false;
  }
}

async function activate(context) {
  const config = vscode.workspace.getConfiguration("sgl");
  if (!config.get("server.enabled", true)) return;
  const command = config.get("server.command", "sgl");
  if (!findServer(command)) {
    console.log(`sgl: \`${command} lsp\` is not available; highlighting only`);
    return;
  }
  let languageclient;
  try {
    languageclient = require("vscode-languageclient/node");
  } catch (error) {
    vscode.window.showWarningMessage(
      "SGL: run `npm install` in the extension folder to enable the language server.",
    );
    return;
  }
  const { LanguageClient, TransportKind } = languageclient;
  const server = { command, args: ["lsp"], transport: TransportKind.stdio };
  client = new LanguageClient(
    "sgl",
    "SGL language server",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "sgl" }, { scheme: "untitled", language: "sgl" }] },
  );
  context.subscriptions.push({ dispose: () => client && client.stop() });
  await client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
