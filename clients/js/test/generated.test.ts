// The committed outputs are current: src/gen/kv_pb.ts is what protoc-gen-es makes of proto/kv.proto,
// and the browser bundle the server embeds (src/web/console/qkv-client.js) is what esbuild makes of
// this library. Each is made again in a temporary directory and compared.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));
const bin = join(root, "node_modules", ".bin");

function inTemporaryDirectory(use: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "qkv-client-"));
  try {
    use(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function run(program: string, args: string[]): void {
  try {
    execFileSync(program, args, {
      cwd: root,
      env: { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH ?? ""}` },
      stdio: "pipe",
    });
  } catch (e) {
    const { stdout, stderr } = e as { stdout?: Buffer; stderr?: Buffer };
    assert.fail(`${program} ${args.join(" ")} failed: ${e}\n${stdout ?? ""}${stderr ?? ""}`);
  }
}

test("src/gen/kv_pb.ts is current with proto/kv.proto (else: npm run generate)", () => {
  inTemporaryDirectory((dir) => {
    run(join(bin, "buf"), ["generate", "--output", dir]);
    const fresh = readFileSync(join(dir, "src", "gen", "kv_pb.ts"), "utf8");
    const committed = readFileSync(join(root, "src", "gen", "kv_pb.ts"), "utf8");
    assert.ok(fresh === committed, "src/gen/kv_pb.ts differs from what buf generate makes now: run npm run generate");
  });
});

test("the server's src/web/console/qkv-client.js is current with this library (else: npm run bundle)", () => {
  inTemporaryDirectory((dir) => {
    const out = join(dir, "qkv-client.js");
    run(process.execPath, [join(root, "scripts", "bundle.mjs"), out]);
    const fresh = readFileSync(out, "utf8");
    const committed = readFileSync(join(root, "..", "..", "src", "web", "console", "qkv-client.js"), "utf8");
    assert.ok(fresh === committed, "src/web/console/qkv-client.js differs from what esbuild makes now: run npm run bundle");
  });
});
