// The committed src/gen/ must be what `npm run generate` produces from the current protos.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { packageDir } from "./gateway.js";

function files(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) {
      const path = join(entry.parentPath, entry.name);
      out.set(relative(dir, path), readFileSync(path, "utf8"));
    }
  }
  return out;
}

test("src/gen is up to date with the protos (run `npm run generate`)", () => {
  const tmp = mkdtempSync(join(tmpdir(), "etk-ts-gen-"));
  try {
    execFileSync(join(packageDir, "node_modules/.bin/buf"), ["generate", "--output", tmp], {
      cwd: packageDir,
      stdio: ["ignore", "inherit", "inherit"],
    });
    const fresh = files(join(tmp, "src/gen"));
    const committed = files(join(packageDir, "src/gen"));
    assert.deepEqual([...committed.keys()].sort(), [...fresh.keys()].sort());
    for (const [path, text] of fresh) {
      assert.ok(committed.get(path) === text, `src/gen/${path} differs from a fresh generation`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
