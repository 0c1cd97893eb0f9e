// The client against a real `nsrun serve` (see server.mjs for the environment it needs).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { Client, NsrunError, dockerRunner } from "../dist/index.js";
import { setup, serve, serveHas, certificates, missing } from "./server.mjs";

const skip = missing();
const text = (bytes) => Buffer.from(bytes).toString("utf8");

/** `nsrun_runs_total{outcome="cancelled"}` from /metrics. */
async function cancelled(client) {
  const m = (await client.metrics()).match(/^nsrun_runs_total\{outcome="cancelled"\} (\d+)/m);
  return m ? Number(m[1]) : 0;
}

/** A cancelled run's record is removed with it: a GET right after is 404 (an ended run stays). */
async function assertGone(client, id) {
  await assert.rejects(client.get(id), (e) => e instanceof NsrunError && e.status === 404, `run ${id} was not cancelled`);
}

describe("nsrun serve over a unix socket", { skip: skip ?? false }, () => {
  let env;
  let client;
  before(async () => {
    env = await setup();
    client = env.client();
    env.servers.push(await serve(env, ["--listen", `unix:${env.socket}`], client));
  });
  after(async () => {
    client?.close();
    await env?.stop();
  });

  test("run: stdout, stderr, exit code, env, stdin", async () => {
    const r = await client.run({
      image: env.image,
      command: ["sh", "-c", 'echo "out $GREETING"; cat; echo err >&2; exit 3'],
      env: { GREETING: "hello" },
      stdin: "from stdin\n",
    });
    assert.equal(r.exitCode, 3);
    assert.equal(r.reason, "exited");
    assert.equal(r.state, "exited");
    assert.equal(r.stdout, "out hello\nfrom stdin\n");
    assert.equal(r.stderr, "err\n");
    assert.match(r.id, /\S/);
    const again = await client.get(r.id);
    assert.equal(again.id, r.id);
    assert.equal(again.tenant, "acme");
    assert.equal(again.result?.exitCode, 3);
  });

  test("run with a signal that never fires: same result through create + events", async () => {
    const r = await client.run(
      { image: env.image, command: ["sh", "-c", "echo one; echo two >&2"], stdin: new Uint8Array([0x61]) },
      { signal: new AbortController().signal },
    );
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "one\n");
    assert.equal(r.stderr, "two\n");
  });

  test("stream: events in order, output chunks as they come, exited last", async () => {
    const s = client.stream({
      image: env.image,
      command: ["sh", "-c", "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c; exit 7"],
    });
    const events = [];
    for await (const ev of s) events.push(ev);
    const id = await s.id;
    assert.ok(events.every((e) => e.runId === id));
    assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1), "seq is 1, 2, 3…");
    const types = events.map((e) => e.type);
    assert.equal(types[0], "queued");
    assert.equal(types.at(-1), "exited");
    assert.equal(types.filter((t) => t === "exited").length, 1);
    const started = types.indexOf("started");
    assert.ok(started >= 0, `a started event: ${types}`);
    assert.ok(types.indexOf("queued") < started, `queued before started: ${types}`);
    assert.ok(types.findIndex((t) => t === "stdout" || t === "stderr") > started, `output after started: ${types}`);
    // The order of the tool's writes survives: a (stdout), b (stderr), c (stdout).
    const output = events
      .filter((e) => e.type === "stdout" || e.type === "stderr")
      .map((e) => `${e.type}:${text(e.data)}`)
      .join("");
    assert.equal(output, "stdout:a\nstderr:b\nstdout:c\n");
    const exited = events.at(-1);
    assert.equal(exited.result.exitCode, 7);
    assert.equal(exited.result.stdout, "a\nc\n");

    // A client connecting late gets the same history, replayed; and from an event number on.
    const replay = [];
    for await (const ev of client.events(id)) replay.push(ev);
    assert.deepEqual(replay.map((e) => [e.seq, e.type]), events.map((e) => [e.seq, e.type]));
    const tail = [];
    for await (const ev of client.events(id, { after: events.length - 1 })) tail.push(ev);
    assert.deepEqual(tail.map((e) => e.type), ["exited"]);
  });

  test("abort: the run is cancelled on the server, the call rejects with the signal's reason", async () => {
    const before = await cancelled(client);
    const ac = new AbortController();
    const s = client.stream({ image: env.image, command: ["sh", "-c", "echo up; sleep 60"] }, { signal: ac.signal });
    const t0 = Date.now();
    await assert.rejects(
      (async () => {
        for await (const ev of s) {
          if (ev.type === "stdout") ac.abort();
        }
      })(),
      { name: "AbortError" },
    );
    const id = await s.id;
    await assertGone(client, id);
    assert.ok(Date.now() - t0 < 30_000, "cancelled long before the tool's sleep ended");

    // run() too: aborting while it waits.
    const ac2 = new AbortController();
    const p = client.run({ image: env.image, command: ["sleep", "60"], labels: { t: "abort-run" } }, { signal: ac2.signal });
    setTimeout(() => ac2.abort(new Error("enough")), 500);
    await assert.rejects(p, { message: "enough" });
    assert.equal(await cancelled(client), before + 2, "both runs counted as cancelled");

    // An already aborted signal: nothing is sent.
    const gone = AbortSignal.abort();
    await assert.rejects(client.run({ image: env.image, command: ["true"] }, { signal: gone }), { name: "AbortError" });
  });

  test("leaving a stream early cancels the run", async () => {
    const s = client.stream({ image: env.image, command: ["sh", "-c", "echo up; sleep 60"] });
    for await (const ev of s) {
      if (ev.type === "stdout") break;
    }
    await assertGone(client, await s.id);
  });

  test("cancel(id) of a run started with create()", async () => {
    const { id } = await client.create({ image: env.image, command: ["sleep", "60"] });
    const run = await client.cancel(id);
    assert.equal(run.id, id);
    assert.equal(run.state, "cancelled");
    assert.equal(run.result?.reason, "cancelled");
    await assertGone(client, id);
  });

  test("inputs and outputs", async () => {
    const r = await client.run({
      image: env.image,
      command: ["sh", "-c", "cat /inputs/in.txt /inputs/bin.dat > out.txt; echo done"],
      inputs: { "in.txt": "text in\n", "bin.dat": new Uint8Array([0, 1, 2, 255]) },
      outputs: ["out.txt"],
    });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.deepEqual(r.outputs.map((o) => [o.name, o.size]), [["out.txt", 12]]);
    const out = await client.output(r.id, "out.txt");
    assert.deepEqual([...out], [...Buffer.from("text in\n"), 0, 1, 2, 255]);
    await assert.rejects(client.output(r.id, "nope.txt"), (e) => e instanceof NsrunError && e.status === 404);
  });

  test("streamed inputs and stdin go as multipart/form-data", async () => {
    // 8 MiB in 64 KiB chunks, produced as they are sent: never one buffer in the client.
    async function* bytes(n, fill) {
      const chunk = Buffer.alloc(64 << 10, fill);
      for (let i = 0; i < n; i++) yield chunk;
    }
    const r = await client.run({
      image: env.image,
      command: ["sh", "-c", "wc -c < /inputs/big.bin; wc -c; cat /inputs/small.txt"],
      inputs: { "big.bin": bytes(128, 0x61), "small.txt": "small\n" },
      stdin: bytes(16, 0x62),
    });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.deepEqual(r.stdout.split(/\s+/).filter(Boolean), [String(8 << 20), String(1 << 20), "small"]);
  });

  test("errors: 401 without or with a bad or revoked token", async () => {
    for (const token of [undefined, "nsr_not-a-real-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaa", env.revoked]) {
      const c = new Client({ socketPath: env.socket, ...(token ? { token } : {}) });
      await assert.rejects(c.run({ image: env.image, command: ["true"] }), (e) => {
        assert.ok(e instanceof NsrunError, String(e));
        assert.equal(e.status, 401);
        assert.equal(e.code, "unauthorized");
        return true;
      });
      c.close();
    }
  });

  test("errors: 403 names the policy rule, 400 names the field, 404 for another tenant's run", async () => {
    await assert.rejects(client.run({ image: "127.0.0.1:1/elsewhere/x:1", command: ["true"] }), (e) => {
      assert.ok(e instanceof NsrunError);
      assert.equal(e.status, 403);
      assert.equal(e.code, "forbidden");
      assert.equal(e.rule, "allowImage");
      return true;
    });
    await assert.rejects(client.run({ image: env.image, command: ["true"], limits: { memory: "1g" } }), {
      status: 403,
      rule: "maxMemory",
    });
    await assert.rejects(client.run({ image: env.image, command: ["true"], network: "host" }), {
      status: 403,
      rule: "allowNetwork",
    });
    await assert.rejects(client.run({ image: env.image, command: ["true"], timeout: 3600 }), {
      status: 403,
      rule: "maxTimeout",
    });
    await assert.rejects(client.run({ image: env.image, limits: { memory: "lots" } }), (e) => {
      assert.equal(e.status, 400);
      assert.equal(e.code, "bad_request");
      assert.match(e.message, /memory/);
      return true;
    });
    const r = await client.run({ image: env.image, command: ["true"] });
    const other = new Client({ socketPath: env.socket, token: env.other });
    await assert.rejects(other.get(r.id), { status: 404, code: "not_found" });
    await assert.rejects(other.cancel(r.id), { status: 404 });
    other.close();
  });

  test("errors: 429 names maxConcurrent", async () => {
    const solo = new Client({ socketPath: env.socket, token: env.solo });
    const { id } = await solo.create({ image: env.image, command: ["sleep", "60"] });
    try {
      await assert.rejects(solo.run({ image: env.image, command: ["true"] }), (e) => {
        assert.ok(e instanceof NsrunError);
        assert.equal(e.status, 429);
        assert.equal(e.code, "too_many_requests");
        assert.equal(e.rule, "maxConcurrent");
        return true;
      });
    } finally {
      await solo.cancel(id);
      solo.close();
    }
  });

  test("dockerRunner: a docker runner's shape and exit codes", async () => {
    const dockerLikeRun = dockerRunner(client);
    const a = await dockerLikeRun({ image: env.image, command: ["sh", "-c", "echo $A $B; cat >&2; exit 4"], env: ["A=1", "B=two"], stdin: "in" });
    assert.deepEqual(a, { stdout: "1 two\n", stderr: "in", exitCode: 4 });
    const b = await dockerLikeRun({ image: env.image, command: "echo shell | tr a-z A-Z", network: "none", timeout: 30 });
    assert.deepEqual(b, { stdout: "SHELL\n", stderr: "", exitCode: 0 });
    const c = await dockerLikeRun({ image: env.image, command: ["sleep", "30"], timeout: 1 });
    assert.equal(c.exitCode, 124);
    // A command nsrun could not start: Docker's 127 (not found) and 126 (not executable), and why
    // on stderr.
    const d = await dockerLikeRun({ image: env.image, command: ["/no/such/tool"] });
    assert.equal(d.exitCode, 127);
    assert.match(d.stderr, /^nsrun: .*\/no\/such\/tool/m);
    const e = await dockerLikeRun({ image: env.image, command: ["/etc/passwd"] });
    assert.equal(e.exitCode, 126);
    assert.match(e.stderr, /^nsrun: .*\/etc\/passwd/m);
  });
});

describe("nsrun serve over TCP", { skip: skip ?? false }, () => {
  let env;
  before(async () => {
    env = await setup();
  });
  after(async () => {
    await env?.stop();
  });

  test("plain HTTP on 127.0.0.1", async () => {
    const port = await env.freePort();
    const client = new Client({ url: `http://127.0.0.1:${port}`, token: env.acme });
    env.servers.push(await serve(env, ["--listen", `127.0.0.1:${port}`], client));
    const r = await client.run({ image: env.image, command: ["echo", "over tcp"] });
    assert.equal(r.stdout, "over tcp\n");
    const types = [];
    for await (const ev of client.stream({ image: env.image, command: ["echo", "x"] })) types.push(ev.type);
    assert.equal(types.at(-1), "exited");
    await assert.rejects(new Client({ url: `http://127.0.0.1:${port}` }).get("x"), { status: 401 });
    client.close();
  });

  test("HTTPS with the server's CA", async (t) => {
    if (!(await serveHas(env.bin, "--tls-cert"))) {
      if (process.env.CI === "true") throw new Error("nsrun serve has no --tls-cert");
      t.skip("this nsrun serve has no --tls-cert");
      return;
    }
    const certs = await certificates(env.dir);
    const port = await env.freePort();
    const client = new Client({ url: `https://127.0.0.1:${port}`, token: env.acme, ca: certs.ca });
    env.servers.push(await serve(env, ["--listen", `127.0.0.1:${port}`, "--tls-cert", certs.cert, "--tls-key", certs.key], client));
    const r = await client.run({ image: env.image, command: ["echo", "over tls"] });
    assert.equal(r.stdout, "over tls\n");
    // Without the CA, the server's certificate is refused.
    const untrusting = new Client({ url: `https://127.0.0.1:${port}`, token: env.acme });
    await assert.rejects(untrusting.get("x"), (e) => e instanceof NsrunError && e.code === "unreachable");
    client.close();
    untrusting.close();

    // mTLS: a server started with --tls-client-ca takes the client certificate, and only with it.
    const mport = await env.freePort();
    const base = { url: `https://127.0.0.1:${mport}`, token: env.acme, ca: certs.ca };
    const mtls = new Client({ ...base, cert: certs.clientCert, key: certs.clientKey });
    env.servers.push(
      await serve(env, ["--listen", `127.0.0.1:${mport}`, "--tls-cert", certs.cert, "--tls-key", certs.key, "--tls-client-ca", certs.caFile], mtls),
    );
    assert.equal((await mtls.run({ image: env.image, command: ["echo", "mtls"] })).stdout, "mtls\n");
    const anonymous = new Client(base);
    await assert.rejects(anonymous.get("x"), (e) => e instanceof NsrunError && e.status === 0);
    mtls.close();
    anonymous.close();
  });
});
