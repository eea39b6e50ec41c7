// The quickstart that INTEGRATION.md shows runs against a real gateway, and the document's
// code blocks are exactly the quickstart's regions.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { packageDir, startGateway, type Gateway } from "./gateway.js";

let gateway: Gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.stop();
});

test("examples/quickstart runs to the end against the dev gateway", async () => {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [join(packageDir, "dist/examples/quickstart.js")],
    {
      cwd: packageDir,
      env: { ...process.env, ETK_GATEWAY_URL: gateway.baseUrl, ETK_DEV_DATA: gateway.dataDir },
      timeout: 60_000,
    },
  );
  assert.match(stdout, /^created \S+ in ACCEPTED$/m);
  assert.match(stdout, /^event \d+: kiv_removed -> COMPLETED$/m);
  assert.match(stdout, /^completed cases: 1$/m);
  if (process.env.ETK_EXPECT_ERROR_INFO === "1") {
    assert.match(stdout, /^this request_id was used for another report/m);
  } else {
    assert.match(stdout, /AlreadyExists|this request_id was used for another report/);
  }
});

/** `<!-- include FILE#REGION -->` followed by a fenced block: the block must be that region. */
test("INTEGRATION.md shows the tested code verbatim", () => {
  const doc = readFileSync(join(packageDir, "INTEGRATION.md"), "utf8");
  const includes = [...doc.matchAll(/<!-- include (\S+)#(\S+) -->\n```\w*\n([\s\S]*?)```\n/g)];
  assert.ok(includes.length >= 4, "the guide includes the quickstart's regions");
  for (const [, file, region, shown] of includes) {
    const source = readFileSync(join(packageDir, file!), "utf8");
    const match = new RegExp(`// #region ${region}\\n([\\s\\S]*?)// #endregion ${region}\\n`).exec(source);
    assert.ok(match, `${file} has a region ${region}`);
    assert.equal(shown, match[1], `INTEGRATION.md's ${file}#${region} differs from the file`);
  }
});
