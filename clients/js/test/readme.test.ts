// The README's examples are true: its main example type-checks under `tsc --strict` as written (the
// integration tests run it against a real server), importing this library's sources as "qkv-client".

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));

test("the README's main example type-checks under tsc --strict", () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const example = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, "README.md has a ```js example");
  // Inside this package, so that its node_modules resolve; dist/ is the build's.
  const dir = mkdtempSync(join(root, "dist", "readme-"));
  try {
    const index = relative(dir, join(root, "src", "index.js")).replaceAll("\\\\", "/");
    const file = join(dir, "example.mts");
    writeFileSync(file, example.replace('from "qkv-client"', `from ${JSON.stringify(index)}`));
    const tsc = join(root, "node_modules", ".bin", "tsc");
    const options = ["--ignoreConfig", "--strict", "--noEmit", "--skipLibCheck", "--target", "es2022", "--module", "nodenext", "--lib", "es2022,dom", "--types", "node"];
    try {
      execFileSync(tsc, [...options, file], { cwd: root, stdio: "pipe" });
    } catch (e) {
      const { stdout, stderr } = e as { stdout?: Buffer; stderr?: Buffer };
      assert.fail(`the example does not type-check:\n${stdout ?? ""}${stderr ?? ""}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
