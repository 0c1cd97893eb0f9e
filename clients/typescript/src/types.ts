// The shapes of `nsrun serve`'s API (v1), as docs/serve-api.md defines them. JSON field names are
// camelCase on the wire; the client adds nothing but conveniences for bytes (Uint8Array in,
// `{ base64 }` on the wire).

/** Bytes or text: text goes as a JSON string, bytes as `{ "base64": "..." }`. */
export type Content = string | Uint8Array;

/** The wire form of {@link Content}. */
export type WireContent = string | { base64: string };

/** Network mode of a run: `none` (only loopback), `private` (user-mode NAT, filtered), `host`. */
export type NetworkMode = "none" | "private" | "host";

/** Resource limits of a run; the tenant's policy caps each. */
export interface Limits {
  /** Bytes, or a size string such as `"256m"`. */
  memory?: number | string;
  /** CPUs, e.g. `0.5`. */
  cpus?: number;
  /** Maximum number of processes. */
  pids?: number;
  /** Cap of each captured stream (stdout, stderr) and each output file: bytes or `"1m"`. */
  output?: number | string;
}

/** What to run: `POST /v1/runs`. Only `image` is required. */
export interface RunRequest {
  /** Registry reference, e.g. `127.0.0.1:5000/tools/busybox:latest` (or `…@sha256:…`). */
  image: string;
  /** Arguments (Docker's CMD override). */
  command?: string[];
  /** Replaces the image's Entrypoint (`[]` clears it). */
  entrypoint?: string[];
  env?: Record<string, string>;
  /** What the tool reads on stdin (it reads `/dev/null` otherwise). */
  stdin?: Content;
  /** Files the tool finds read-only at `/inputs/<name>`. */
  inputs?: Record<string, Content>;
  /** Files collected from the work directory (`/work`) after the run (read them with `Client.output`). */
  outputs?: string[];
  workdir?: string;
  /** `UID[:GID]` or `NAME[:GROUP]`. */
  user?: string;
  network?: NetworkMode;
  /** Allowed destinations in private mode (`host:port/proto`, CIDR, …). */
  egress?: string[];
  limits?: Limits;
  /** Seconds; the run is killed after it (reason `timeout`, exit code 124). */
  timeout?: number;
  labels?: Record<string, string>;
}

/** The state of a run. */
export type RunState = "queued" | "pulling" | "running" | "exited" | "cancelled" | "failed";

/** Why a run ended. */
export type EndReason = "exited" | "signaled" | "timeout" | "oom" | "cancelled" | "failed";

/** A file collected after a run. */
export interface OutputInfo {
  name: string;
  /** Its real size (more than was kept when `truncated`). */
  size: number;
  /** The tool did not write it (or not as a regular file). */
  missing: boolean;
  truncated: boolean;
}

/** How a run ended: the `result` of a run object, and the data of the `exited` event. */
export interface Result {
  /**
   * Docker's exit code: the tool's own, 128+N for signal N, 124 on timeout, 137 on OOM; `null` only
   * when the run failed before the tool ran (`error` says why) or was cancelled before it started.
   */
  exitCode: number | null;
  signal: number | null;
  reason: EndReason;
  /** The tool's stdout as UTF-8 text (invalid sequences replaced), up to the capture cap. */
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  outputs: OutputInfo[];
  image?: { reference: string; digest: string } | null;
  durationMs?: number;
  timing?: { queueMs?: number; pullMs?: number; startMs?: number; runMs?: number };
  /** One line saying why the run failed (reason `failed`). */
  error: string | null;
  /** The kind of failure, for machines (`null` when the tool ran). */
  errorKind?: ErrorKind | null;
}

/** Why a run failed before its tool ran (`Result.errorKind`). */
export type ErrorKind =
  | "badSpec"
  | "imageNotFound"
  | "auth"
  | "pullFailed"
  | "hostRefused"
  | "setup"
  | "commandNotFound"
  | "notExecutable"
  | "files"
  | "sandbox"
  | "helper"
  | "cancelled";

/** A run as the server knows it: `GET /v1/runs/{id}`. */
export interface Run {
  id: string;
  tenant: string;
  state: RunState;
  labels: Record<string, string>;
  createdAt: string;
  /** `null` until the run has ended. */
  result: Result | null;
}

/** What `Client.run` resolves to: the run's result, with its id and final state. */
export interface RunResult extends Result {
  id: string;
  state: RunState;
}

/** Common fields of every event: `seq` is the SSE id (1, 2, 3… per run). */
interface EventBase {
  /** The run this event belongs to. */
  runId: string;
  seq: number;
}

/** Events of a run, in order, as `GET /v1/runs/{id}/events` sends them. */
export type Event =
  | (EventBase & { type: "queued" })
  | (EventBase & { type: "pulling"; image: string })
  | (EventBase & { type: "started"; setupMs?: number })
  | (EventBase & { type: "stdout"; data: Uint8Array })
  | (EventBase & { type: "stderr"; data: Uint8Array })
  | (EventBase & { type: "exited"; result: Result });

/** Options every call takes. */
export interface CallOptions {
  /** Aborting it ends the call; for a run, the run is also cancelled on the server (DELETE). */
  signal?: AbortSignal;
}
