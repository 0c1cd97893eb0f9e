// Starts real `nsrun serve` processes for the tests: a tokens file made by `nsrun token new`, a
// busybox image pushed to the test registry, a unix socket and a TCP (optionally TLS) listener.
//
// Environment (as scripts/test.sh sets it for the Rust tests):
//   NSRUN_BIN            the nsrun binary
//   NSRUN_TEST_REGISTRY  host:port of a plain-HTTP registry on 127.0.0.1
//   NSRUN_TEST_IMAGE     an image there to run (busybox); else pushed from NSRUN_TEST_ROOTFS
//                        with PUSH_ROOTFS (target/debug/examples/push_rootfs)
// Without them the tests are skipped, except in CI (CI=true), where that is a failure.
import { spawn, execFile } from "node:child_process";
import { mkdtemp, rm, readFile, access, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import * as net from "node:net";
import { Client } from "../dist/index.js";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

/** Why the server tests cannot run here, or null. In CI a reason is a failure, never a skip. */
export function missing() {
  const why = [];
  if (!process.env.NSRUN_BIN) why.push("NSRUN_BIN");
  if (!process.env.NSRUN_TEST_REGISTRY && !process.env.NSRUN_TEST_IMAGE) why.push("NSRUN_TEST_REGISTRY");
  if (why.length === 0) return null;
  const msg = `not set: ${why.join(", ")}`;
  if (process.env.CI === "true") throw new Error(`${msg} (CI=true: these tests must run)`);
  return msg;
}

async function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function exists(p) {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** The image the tests run: NSRUN_TEST_IMAGE, or the busybox rootfs pushed once. */
async function image() {
  if (process.env.NSRUN_TEST_IMAGE) return process.env.NSRUN_TEST_IMAGE;
  const rootfs = process.env.NSRUN_TEST_ROOTFS;
  const push = process.env.PUSH_ROOTFS ?? resolve(here, "../../../target/debug/examples/push_rootfs");
  if (!rootfs) throw new Error("NSRUN_TEST_IMAGE or NSRUN_TEST_ROOTFS (with PUSH_ROOTFS) must be set");
  const ref = `${process.env.NSRUN_TEST_REGISTRY}/tsclient/busybox:latest`;
  await run(push, [rootfs, ref]);
  return ref;
}

/** `nsrun token new …` → the token it printed once. */
export async function newToken(env, tenant, args) {
  const { stdout } = await run(env.bin, ["token", "new", "--tokens", env.tokens, "--tenant", tenant, ...args]);
  const token = stdout.split(/\s+/).find((w) => /^nsr_[A-Za-z0-9_-]{20,}$/.test(w));
  if (!token) throw new Error(`nsrun token new printed no token: ${stdout}`);
  return token;
}

/** Starts `nsrun serve` with these listen/TLS arguments; resolves once /healthz answers. */
export async function serve(env, listenArgs, probe) {
  const child = spawn(env.bin, ["serve", "--root", env.root, "--tokens", env.tokens, ...listenArgs], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr += d;
  });
  const exited = new Promise((res) => child.once("exit", (code, sig) => res(`exited ${code ?? sig}`)));
  const deadline = Date.now() + 30_000;
  for (;;) {
    const state = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 100))]);
    if (state) throw new Error(`nsrun serve ${listenArgs.join(" ")} ${state}: ${stderr.trim()}`);
    try {
      if (await probe.health()) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`nsrun serve ${listenArgs.join(" ")} did not answer /healthz in 30 s: ${stderr.trim()}`);
    }
  }
  return {
    child,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Does this nsrun's `serve` take this option? (TLS may land after the rest.) */
export async function serveHas(bin, option) {
  try {
    const { stdout } = await run(bin, ["serve", "--help"]);
    return stdout.includes(option);
  } catch {
    return false;
  }
}

/** A CA and a leaf certificate for 127.0.0.1 (openssl), for the TLS listener. */
export async function certificates(dir) {
  const o = (...a) => run("openssl", a);
  await o("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nsrun tsclient test CA",
    "-keyout", join(dir, "ca.key"), "-out", join(dir, "ca.pem"),
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  await o("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", join(dir, "leaf.key"), "-out", join(dir, "leaf.csr"));
  await writeFile(join(dir, "leaf.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  await o("x509", "-req", "-in", join(dir, "leaf.csr"), "-CA", join(dir, "ca.pem"), "-CAkey", join(dir, "ca.key"),
    "-CAcreateserial", "-days", "1", "-extfile", join(dir, "leaf.ext"), "-out", join(dir, "leaf.pem"));
  // A client certificate from the same CA, for mTLS.
  await o("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=worker", "-keyout", join(dir, "client.key"), "-out", join(dir, "client.csr"));
  await writeFile(join(dir, "client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  await o("x509", "-req", "-in", join(dir, "client.csr"), "-CA", join(dir, "ca.pem"), "-CAkey", join(dir, "ca.key"),
    "-CAcreateserial", "-days", "1", "-extfile", join(dir, "client.ext"), "-out", join(dir, "client.pem"));
  return {
    ca: await readFile(join(dir, "ca.pem")),
    caFile: join(dir, "ca.pem"),
    cert: join(dir, "leaf.pem"),
    key: join(dir, "leaf.key"),
    clientCert: await readFile(join(dir, "client.pem")),
    clientKey: await readFile(join(dir, "client.key")),
  };
}

/** Everything the tests share: dirs, the image, tokens. `stop()` removes it all. */
export async function setup() {
  const dir = await mkdtemp(join(tmpdir(), "nsrun-tsclient-"));
  await chmod(dir, 0o700);
  const bin = process.env.NSRUN_BIN;
  if (!(await exists(bin))) throw new Error(`NSRUN_BIN=${bin} does not exist`);
  const env = {
    dir,
    bin,
    root: join(dir, "root"),
    tokens: join(dir, "tokens.json"),
    socket: join(dir, "nsrun.sock"),
    image: await image(),
    freePort,
  };
  const repo = env.image.slice(0, env.image.lastIndexOf("/"));
  env.acme = await newToken(env, "acme", ["--allow-image", `${repo}/*`, "--allow-network", "none", "--max-memory", "256m", "--max-timeout", "60"]);
  env.other = await newToken(env, "other", ["--allow-image", `${repo}/*`]);
  env.solo = await newToken(env, "solo", ["--allow-image", `${repo}/*`, "--max-concurrent", "1"]);
  env.revoked = await newToken(env, "gone", ["--allow-image", `${repo}/*`]);
  await run(bin, ["token", "revoke", "--tokens", env.tokens, "--tenant", "gone"]);
  env.servers = [];
  env.client = (opts) => new Client({ socketPath: env.socket, token: env.acme, ...opts });
  env.stop = async () => {
    for (const s of env.servers) await s.stop();
    await rm(dir, { recursive: true, force: true });
  };
  return env;
}
