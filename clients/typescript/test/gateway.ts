// Starts the real gateway binary in dev mode on a free port for the tests, and stops it.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

/** This package's directory (tests run compiled from dist/test/). */
export const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const repoRoot = resolve(packageDir, "../..");

export interface Gateway {
  /** `https://127.0.0.1:<port>` */
  baseUrl: string;
  /** The dev data directory: certs/ and dev-identities.json. */
  dataDir: string;
  /** The CA and a client's certificate and key, by dev identity name (e.g. `provider-a`). */
  pems(identity: string): { caPem: string; certPem: string; keyPem: string };
  stop(): Promise<void>;
}

/** The binary: `ETK_GATEWAY_BIN` (relative to the working directory) or the repo's debug build. */
export function gatewayBinary(): string {
  const configured = process.env.ETK_GATEWAY_BIN;
  const bin = configured ? resolve(configured) : join(repoRoot, "target/debug/etjanstekort-gateway");
  if (!existsSync(bin)) {
    // Fail rather than skip: a missing gateway must not look like a passing suite.
    throw new Error(`gateway binary not found at ${bin}: build it or set ETK_GATEWAY_BIN`);
  }
  return bin;
}

export async function startGateway(env: Record<string, string> = {}): Promise<Gateway> {
  const bin = gatewayBinary();
  const dataDir = mkdtempSync(join(tmpdir(), "etk-ts-client-"));
  const child = spawn(
    bin,
    ["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir", dataDir],
    {
      env: {
        ...process.env,
        ETK_ADMIN__LISTEN: "127.0.0.1:0",
        // A shorter simulated confirmation keeps the watch-to-the-end test quick.
        ETK_TJANSTEID__CONFIRM_AFTER: "1s",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const stderr: string[] = [];
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr.push(chunk);
  });
  try {
    const address = await listeningAddress(child);
    const identities = JSON.parse(readFileSync(join(dataDir, "dev-identities.json"), "utf8"));
    const read = (file: string) => readFileSync(join(dataDir, file), "utf8");
    return {
      baseUrl: `https://${address}`,
      dataDir,
      pems(identity) {
        const client = identities.clients[identity];
        if (!client) throw new Error(`no dev identity ${identity}`);
        return { caPem: read(identities.ca), certPem: read(client.cert), keyPem: read(client.key) };
      },
      async stop() {
        await stopChild(child);
        rmSync(dataDir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await stopChild(child);
    rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`gateway did not start: ${String(error)}\n${stderr.join("")}`);
  }
}

function listeningAddress(child: ChildProcess): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => reject(new Error("no 'listening on' line within 30 s")), 30_000);
    lines.on("line", (line) => {
      const match = /listening on (\S+)/.exec(line);
      if (match && !line.startsWith("admin")) {
        clearTimeout(timer);
        resolvePromise(match[1]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited with ${code}`));
    });
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolvePromise) => {
    child.once("exit", () => resolvePromise());
    child.kill("SIGTERM");
  });
}
