// A drop-in for code that runs jobs with `docker run` (or the Docker Engine API) and expects
// `{ stdout, stderr, exitCode }` back: same inputs, same shape, Docker's exit-code conventions.
import type { Client } from "./client.js";
import type { Content, NetworkMode, Result } from "./types.js";

/** A docker runner's job. */
export interface DockerLikeRunOptions {
  image: string;
  /** Arguments, as `docker run IMAGE ARGS…`; a string runs through `sh -c`. */
  command?: string[] | string;
  /** `{K: V}` or Docker's `["K=V", …]`. */
  env?: Record<string, string> | string[];
  stdin?: Content;
  /**
   * Docker's names are accepted: `none`; `bridge` / `default` become nsrun's `private`
   * (outbound through user-mode NAT, the host's loopback and private ranges refused); `host`.
   * Default: `none` (Docker's default is `bridge`: pass it to keep that behaviour).
   */
  network?: NetworkMode | "bridge" | "default";
  /** Seconds; the run is killed after it and exits 124. */
  timeout?: number;
  signal?: AbortSignal;
}

/** What a docker runner returns. */
export interface DockerLikeRunResult {
  stdout: string;
  stderr: string;
  /**
   * The tool's own code; else Docker's conventions: 128+N killed by signal N (137 also for an
   * out-of-memory kill), 124 timeout, 127 command not found, 126 command not executable, 125
   * nsrun could not run it otherwise (`stderr` then says why).
   */
  exitCode: number;
}

/** Docker's exit code for a result. */
export function dockerExitCode(r: Result): number {
  if (typeof r.exitCode === "number") return r.exitCode;
  if (r.reason === "timeout") return 124;
  if (r.reason === "oom") return 137;
  if (typeof r.signal === "number") return 128 + r.signal;
  if (r.reason === "cancelled") return 137;
  if (r.errorKind === "commandNotFound") return 127;
  if (r.errorKind === "notExecutable") return 126;
  return 125;
}

function envRecord(env: DockerLikeRunOptions["env"]): Record<string, string> | undefined {
  if (env === undefined || !Array.isArray(env)) return env;
  const out: Record<string, string> = {};
  for (const kv of env) {
    const i = kv.indexOf("=");
    if (i <= 0) throw new TypeError(`env: expected K=V, got ${JSON.stringify(kv)}`);
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

function networkMode(n: DockerLikeRunOptions["network"]): NetworkMode | undefined {
  if (n === "bridge" || n === "default") return "private";
  return n;
}

/**
 * Runs one job like `docker run --rm -i IMAGE COMMAND…` would, through `nsrun serve`.
 * Rejects only when the server refuses the job (NsrunError: 401, 403 with `rule`, …) or is
 * unreachable, or when `signal` aborts (the run is then cancelled on the server).
 */
export async function dockerLikeRun(client: Client, opts: DockerLikeRunOptions): Promise<DockerLikeRunResult> {
  const command = typeof opts.command === "string" ? ["sh", "-c", opts.command] : opts.command;
  const env = envRecord(opts.env);
  const network = networkMode(opts.network);
  const r = await client.run(
    {
      image: opts.image,
      ...(command !== undefined ? { command } : {}),
      ...(env !== undefined ? { env } : {}),
      ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
      ...(network !== undefined ? { network } : {}),
      ...(opts.timeout !== undefined ? { timeout: opts.timeout } : {}),
    },
    opts.signal !== undefined ? { signal: opts.signal } : {},
  );
  const stderr = r.reason === "failed" && r.error && !r.stderr.includes(r.error) ? `${r.stderr}${r.stderr && !r.stderr.endsWith("\n") ? "\n" : ""}nsrun: ${r.error}\n` : r.stderr;
  return { stdout: r.stdout, stderr, exitCode: dockerExitCode(r) };
}

/** `dockerLikeRun` bound to a client: a function with a docker runner's shape. */
export function dockerRunner(client: Client): (opts: DockerLikeRunOptions) => Promise<DockerLikeRunResult> {
  return (opts) => dockerLikeRun(client, opts);
}
