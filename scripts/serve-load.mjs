#!/usr/bin/env node
// Load generator of scripts/bench-serve.sh: runs `/bin/true` back to back through an HTTP API
// over a unix socket, CONCURRENCY at a time, and prints one JSON line: runs per second and
// latency percentiles of whole runs.
//
//   node scripts/serve-load.mjs nsrun  SOCKET IMAGE CONCURRENCY SECONDS   (token: NSRUN_TOKEN)
//   node scripts/serve-load.mjs docker SOCKET IMAGE CONCURRENCY SECONDS
//
// nsrun:  POST /v1/runs?wait=true {"image", "command": ["/bin/true"]}    one request per run
// docker: POST /containers/create, POST …/start, POST …/wait, DELETE …   four requests per run
//         (what `docker run --rm --network none IMAGE /bin/true` asks the Engine API, minus attach)
// Each worker keeps one keep-alive connection. The first CONCURRENCY runs warm up and are not
// counted. Plain node:http, no dependencies, so both sides pay the same client cost.
import * as http from "node:http";

const [api, socketPath, image, concArg, secondsArg] = process.argv.slice(2);
const concurrency = Number(concArg);
const seconds = Number(secondsArg);
if (!["nsrun", "docker"].includes(api) || !socketPath || !image || !(concurrency > 0) || !(seconds > 0)) {
  console.error("usage: serve-load.mjs nsrun|docker SOCKET IMAGE CONCURRENCY SECONDS");
  process.exit(2);
}
const token = process.env.NSRUN_TOKEN ?? "";

function request(agent, method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const headers = { "content-type": "application/json" };
    if (api === "nsrun") headers.authorization = `Bearer ${token}`;
    const req = http.request({ agent, socketPath, method, path, headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode < 200 || res.statusCode > 299) {
          reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 300)}`));
        } else {
          resolve(text ? JSON.parse(text) : null);
        }
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(data);
  });
}

async function oneRun(agent) {
  if (api === "nsrun") {
    const run = await request(agent, "POST", "/v1/runs?wait=true", { image, command: ["/bin/true"] });
    if (run?.result?.exitCode !== 0) throw new Error(`run ended ${JSON.stringify(run?.result ?? run).slice(0, 300)}`);
    return;
  }
  const c = await request(agent, "POST", "/v1.41/containers/create", {
    Image: image,
    Cmd: ["/bin/true"],
    HostConfig: { NetworkMode: "none" },
  });
  await request(agent, "POST", `/v1.41/containers/${c.Id}/start`);
  const w = await request(agent, "POST", `/v1.41/containers/${c.Id}/wait`);
  await request(agent, "DELETE", `/v1.41/containers/${c.Id}?force=true`);
  if (w.StatusCode !== 0) throw new Error(`container exited ${w.StatusCode}`);
}

const latencies = [];
let errors = 0;
let completed = 0; // every successful run, warm-up and those ending after the window included
let firstError = "";
let warm = concurrency;
let stop = false;
let t0 = 0;
let tEnd = 0;

async function worker() {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  while (!stop) {
    const start = process.hrtime.bigint();
    try {
      await oneRun(agent);
      completed += 1;
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (warm > 0) {
        warm -= 1;
        if (warm === 0) t0 = performance.now();
      } else if (!stop) {
        latencies.push(ms);
      }
    } catch (err) {
      errors += 1;
      firstError ||= String(err.message ?? err);
      if (errors > 20 && errors > latencies.length) stop = true;
    }
  }
  agent.destroy();
}

const workers = Array.from({ length: concurrency }, worker);
// The clock starts when the warm-up runs are done.
const waitWarm = setInterval(() => {
  if (warm === 0 || stop) {
    clearInterval(waitWarm);
    setTimeout(() => {
      tEnd = performance.now();
      stop = true;
    }, seconds * 1000);
  }
}, 5);
await Promise.all(workers);
// Runs that ended after the window closed are not counted, nor is their time.
const elapsed = ((tEnd || performance.now()) - t0) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.ceil((p / 100) * latencies.length) - 1)] : null);
const out = {
  api,
  concurrency,
  runs: latencies.length,
  seconds: Number(elapsed.toFixed(2)),
  runsPerSecond: latencies.length ? Number((latencies.length / elapsed).toFixed(2)) : 0,
  p50Ms: pct(50) && Number(pct(50).toFixed(2)),
  p99Ms: pct(99) && Number(pct(99).toFixed(2)),
  errors,
  completed,
  ...(firstError ? { firstError } : {}),
};
console.log(JSON.stringify(out));
process.exit(errors > 0 && latencies.length === 0 ? 1 : 0);
