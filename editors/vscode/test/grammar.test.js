// Tokenises every example and test program with the TextMate grammar (vscode-textmate +
// vscode-oniguruma, as VS Code does) and checks the scopes of key tokens.
// Run: npm test (after npm install) — tests/test_editor_grammar.py runs it too.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const test = require("node:test");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const ROOT = path.resolve(__dirname, "..", "..", "..");
const GRAMMAR = path.resolve(__dirname, "..", "syntaxes", "sgl.tmLanguage.json");

async function loadGrammar() {
  const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
      createOnigString: (text) => new oniguruma.OnigString(text),
    }),
    loadGrammar: async (scopeName) =>
      scopeName === "source.sgl"
        ? vsctm.parseRawGrammar(fs.readFileSync(GRAMMAR, "utf8"), GRAMMAR)
        : null,
  });
  return registry.loadGrammar("source.sgl");
}

/** Every token of `text` as {text, scopes} (scopes without the root), line by line. */
function tokenize(grammar, text) {
  const tokens = [];
  let stack = vsctm.INITIAL;
  for (const line of text.split("\n")) {
    const result = grammar.tokenizeLine(line, stack);
    for (const token of result.tokens) {
      const text = line.slice(token.startIndex, token.endIndex);
      const scopes = token.scopes.slice(1);
      // Unscoped runs ("x = ") are split into words, so that names can be looked up.
      const pieces = scopes.length === 0 ? text.split(/\s+/) : [text];
      for (const piece of pieces) {
        if (piece.trim()) tokens.push({ text: scopes.length === 0 ? piece : text, scopes });
      }
    }
    stack = result.ruleStack;
  }
  return tokens;
}

/** The innermost scopes of the first token whose text is `text` (after `after` tokens match). */
function scopesOf(tokens, text, nth = 0) {
  const found = tokens.filter((token) => token.text === text);
  assert.ok(found.length > nth, `no token ${JSON.stringify(text)} (#${nth})`);
  return found[nth].scopes;
}

function has(tokens, text, scope, nth = 0) {
  const scopes = scopesOf(tokens, text, nth);
  assert.ok(scopes.includes(scope), `${JSON.stringify(text)} has ${scopes.join(" ")}, not ${scope}`);
}

function programs() {
  const dirs = [path.join(ROOT, "examples"), path.join(ROOT, "tests", "programs"), path.join(ROOT, "tests", "programs", "lib")];
  return dirs
    .filter((dir) => fs.existsSync(dir))
    .flatMap((dir) => fs.readdirSync(dir).filter((f) => f.endsWith(".sgl")).map((f) => path.join(dir, f)));
}

test("every example and fixture tokenises with strings closed at the end", async () => {
  const grammar = await loadGrammar();
  const files = programs();
  assert.ok(files.length >= 10, "examples and fixtures found");
  for (const file of files) {
    const text = fs.readFileSync(file, "utf8");
    const tokens = tokenize(grammar, text + "\n\nx = 1\n");
    const last = tokens.filter((t) => t.text === "x").pop();
    assert.deepEqual(last.scopes, [], `${path.basename(file)}: a construct stays open at the end`);
    const quoted = tokens.filter((t) => /^"[^"]*"$/.test(t.text) && t.scopes.length === 0);
    assert.deepEqual(quoted, [], `${path.basename(file)}: a string outside a string scope`);
  }
});

test("keywords, roles, declarations and generation", async () => {
  const grammar = await loadGrammar();
  const tokens = tokenize(
    grammar,
    [
      "# a comment",
      'import "lib/x.sgl" as lib',
      "param topic = 'cities'",
      "def ask(question, shots=\"\"):",
      "    return question",
      "system \"Be brief.\"",
      "user:",
      "    \"Q: {topic}\"",
      "assistant gen answer(max_tokens=16, stop=[\"\\n\"], temperature=0.5)",
      "select pick(method=\"greedy\") from [\"a\", \"b\"]",
      "tips = fork i in range(2):",
      "    gen detail",
      "if answer not in [\"x\"] and true:",
      "    print(len(answer), none)",
    ].join("\n"),
  );
  has(tokens, " a comment", "comment.line.number-sign.sgl");
  has(tokens, "import", "keyword.control.import.sgl");
  has(tokens, "lib", "entity.name.namespace.sgl");
  has(tokens, "param", "storage.modifier.param.sgl");
  has(tokens, "topic", "variable.other.constant.param.sgl");
  has(tokens, "def", "storage.type.function.sgl");
  has(tokens, "ask", "entity.name.function.sgl");
  has(tokens, "return", "keyword.control.sgl");
  has(tokens, "system", "keyword.other.role.sgl");
  has(tokens, "user", "keyword.other.role.sgl");
  has(tokens, "assistant", "keyword.other.role.sgl");
  has(tokens, "gen", "keyword.control.generation.sgl");
  has(tokens, "answer", "variable.other.generated.sgl");
  has(tokens, "max_tokens", "variable.parameter.generation.sgl");
  has(tokens, "stop", "variable.parameter.generation.sgl");
  has(tokens, "temperature", "variable.parameter.generation.sgl");
  has(tokens, "16", "constant.numeric.integer.sgl");
  has(tokens, "0.5", "constant.numeric.float.sgl");
  has(tokens, "select", "keyword.control.generation.sgl");
  has(tokens, "pick", "variable.other.generated.sgl");
  has(tokens, "method", "variable.parameter.generation.sgl");
  has(tokens, "from", "keyword.control.sgl");
  has(tokens, "fork", "keyword.control.sgl");
  has(tokens, "detail", "variable.other.generated.sgl");
  has(tokens, "range", "support.function.builtin.sgl");
  has(tokens, "not in", "keyword.operator.logical.sgl");
  has(tokens, "and", "keyword.operator.logical.sgl");
  has(tokens, "true", "constant.language.sgl");
  has(tokens, "none", "constant.language.sgl");
  has(tokens, "print", "support.function.builtin.sgl");
});

test("strings: escapes, interpolation with format specs, raw and triple-quoted", async () => {
  const grammar = await loadGrammar();
  const tokens = tokenize(
    grammar,
    [
      "x = \"Score {score:.2f} of {{literal}} \\n {d['k']}\"",
      'pattern = r"\\d+{2}"',
      'long = """',
      "    first {name.upper()}",
      "    second",
      '"""',
      "after = 1",
    ].join("\n"),
  );
  has(tokens, "score", "meta.interpolation.sgl");
  has(tokens, "{", "punctuation.section.interpolation.begin.sgl");
  has(tokens, ":.2f", "storage.type.format.sgl");
  has(tokens, "{{", "constant.character.escape.brace.sgl");
  has(tokens, "\\n", "constant.character.escape.sgl");
  has(tokens, "r", "storage.type.string.raw.sgl");
  has(tokens, "\\d+{2}", "string.quoted.raw.double.sgl");
  const raw = scopesOf(tokens, "\\d+{2}");
  assert.ok(!raw.includes("meta.interpolation.sgl"), "no interpolation in raw strings");
  has(tokens, "name", "string.quoted.triple.sgl");
  has(tokens, "name", "meta.interpolation.sgl");
  has(tokens, "upper", "entity.name.function.call.sgl");
  has(tokens, "    second", "string.quoted.triple.sgl");
  assert.deepEqual(scopesOf(tokens, "after"), []);
});

test("schemas: fields, types, optional and enums", async () => {
  const grammar = await loadGrammar();
  const tokens = tokenize(
    grammar,
    [
      "schema City:",
      "    name: str",
      "    founded: int?",
      "    tags: list[Tag]",
      '    size: "small" | "large"',
      "",
      "x = City",
    ].join("\n"),
  );
  has(tokens, "schema", "storage.type.schema.sgl");
  has(tokens, "City", "entity.name.type.schema.sgl");
  has(tokens, "name", "variable.other.property.field.sgl");
  has(tokens, "str", "support.type.sgl");
  has(tokens, "?", "keyword.operator.optional.sgl");
  has(tokens, "Tag", "entity.name.type.sgl");
  has(tokens, "|", "keyword.operator.union.sgl");
  assert.deepEqual(scopesOf(tokens, "x"), []);
});
