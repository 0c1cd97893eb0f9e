// What the client decides on its own, without a server: option checks, error parsing, Docker's
// exit codes, an unreachable server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, NsrunError, dockerExitCode } from "../dist/index.js";

test("exactly one of socketPath or url", () => {
  assert.throws(() => new Client({}), /exactly one of socketPath or url/);
  assert.throws(() => new Client({ socketPath: "/x", url: "http://127.0.0.1:1" }), /exactly one/);
  assert.throws(() => new Client({ url: "ftp://x" }), /expected http: or https:/);
  assert.throws(() => new Client({ url: "not a url" }), /not a URL/);
});

test("NsrunError from the server's error body, and from anything else", () => {
  const e = NsrunError.fromResponse(403, '{"error":{"code":"forbidden","message":"limits.memory: 1g is over the tenant\'s 256m","rule":"maxMemory"}}');
  assert.ok(e instanceof Error);
  assert.equal(e.name, "NsrunError");
  assert.equal(e.status, 403);
  assert.equal(e.code, "forbidden");
  assert.equal(e.rule, "maxMemory");
  assert.match(e.message, /limits\.memory/);
  const plain = NsrunError.fromResponse(502, "<html>Bad Gateway</html>\nmore");
  assert.equal(plain.code, "http_502");
  assert.equal(plain.message, "<html>Bad Gateway</html>");
  assert.equal(plain.rule, undefined);
  assert.equal(NsrunError.fromResponse(500, "").message, "HTTP 500");
});

test("Docker's exit codes for results", () => {
  const r = (o) => ({ exitCode: null, signal: null, reason: "exited", stdout: "", stderr: "", stdoutTruncated: false, stderrTruncated: false, outputs: [], error: null, ...o });
  assert.equal(dockerExitCode(r({ exitCode: 3 })), 3);
  assert.equal(dockerExitCode(r({ reason: "timeout", signal: 9 })), 124);
  assert.equal(dockerExitCode(r({ reason: "oom", signal: 9 })), 137);
  assert.equal(dockerExitCode(r({ reason: "signaled", signal: 15 })), 143);
  assert.equal(dockerExitCode(r({ reason: "failed", error: "pull failed" })), 125);
});

test("an unreachable server is an NsrunError with status 0", async () => {
  const c = new Client({ socketPath: "/nonexistent/nsrun.sock", token: "t" });
  await assert.rejects(c.get("r-1"), (e) => {
    assert.ok(e instanceof NsrunError);
    assert.equal(e.status, 0);
    assert.equal(e.code, "unreachable");
    assert.match(e.message, /\/nonexistent\/nsrun\.sock/);
    return true;
  });
  c.close();
});
