import { randomBytes } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { createParser, type EventSourceMessage } from "eventsource-parser";
import { NsrunError } from "./errors.js";
import { Transport, readBytes, readText, type TransportOptions } from "./transport.js";
import type { CallOptions, Content, Event, Result, Run, RunRequest, RunResult, RunState, WireContent } from "./types.js";

/** Where the server is and who we are. Give exactly one of `socketPath` or `url`. */
export interface ClientOptions extends TransportOptions {
  /** Bearer token printed by `nsrun token new` (`nsr_…`). */
  token?: string;
}

/** A stream of bytes for a large input or stdin: sent as `multipart/form-data`, never buffered whole. */
export type ByteStream = AsyncIterable<Uint8Array>;

/** A run request whose inputs and stdin may also be streams (a `fs.createReadStream`, …). */
export interface StreamingRunRequest extends Omit<RunRequest, "inputs" | "stdin"> {
  stdin?: Content | ByteStream;
  inputs?: Record<string, Content | ByteStream>;
}

/** Options of {@link Client.events}. */
export interface EventsOptions extends CallOptions {
  /** Resume after this event number (`Last-Event-ID`); the whole history is replayed otherwise. */
  after?: number;
}

/**
 * A run's events as they come, from `Client.stream`. Iterate it once. Leaving the loop early
 * (`break`, an exception) or aborting the signal cancels the run on the server.
 */
export interface RunStream extends AsyncIterable<Event> {
  /** The run's id, once the server has accepted the request. */
  readonly id: Promise<string>;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("This operation was aborted", "AbortError");
}

function isStream(v: unknown): v is ByteStream {
  return typeof v === "object" && v !== null && !(v instanceof Uint8Array) && Symbol.asyncIterator in v;
}

function wire(c: Content): WireContent {
  return typeof c === "string" ? c : { base64: Buffer.from(c.buffer, c.byteOffset, c.byteLength).toString("base64") };
}

/** The state a result implies, for runs followed through their events. */
function stateOf(result: Result): RunState {
  return result.reason === "cancelled" ? "cancelled" : result.reason === "failed" ? "failed" : "exited";
}

/**
 * A client of `nsrun serve`.
 *
 * ```ts
 * const client = new Client({ socketPath: "/run/nsrun/nsrun.sock", token: process.env.NSRUN_TOKEN });
 * const r = await client.run({ image: "127.0.0.1:5000/tools/busybox:latest", command: ["echo", "hi"] });
 * console.log(r.exitCode, r.stdout);
 * ```
 */
export class Client {
  readonly #transport: Transport;
  readonly #token: string | undefined;

  constructor(opts: ClientOptions) {
    this.#transport = new Transport(opts);
    this.#token = opts.token;
  }

  #headers(extra?: Record<string, string>): Record<string, string> {
    const h: Record<string, string> = { accept: "application/json", ...extra };
    if (this.#token !== undefined) h.authorization = `Bearer ${this.#token}`;
    return h;
  }

  async #call(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<IncomingMessage> {
    const json = body === undefined ? undefined : JSON.stringify(body);
    const res = await this.#transport.request({
      method,
      path,
      headers: this.#headers(json === undefined ? undefined : { "content-type": "application/json" }),
      body: json,
      signal,
    });
    const status = res.statusCode ?? 0;
    if (status < 200 || status > 299) {
      throw NsrunError.fromResponse(status, await this.#read(res, signal, readText));
    }
    return res;
  }

  /** Reads a body; an abort while reading rejects with the signal's reason, not a socket error. */
  async #read<T>(res: IncomingMessage, signal: AbortSignal | undefined, read: (r: IncomingMessage) => Promise<T>): Promise<T> {
    try {
      return await read(res);
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      throw new NsrunError(0, "bad_response", `reading the answer: ${(err as Error).message}`, undefined, { cause: err });
    }
  }

  async #json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.#call(method, path, body, signal);
    const text = await this.#read(res, signal, readText);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new NsrunError(res.statusCode ?? 0, "bad_response", `not JSON: ${text.slice(0, 200)}`);
    }
  }

  /** Sends the request as JSON, or as multipart when an input or stdin is a stream. */
  async #post(request: StreamingRunRequest, query: string, signal?: AbortSignal): Promise<IncomingMessage> {
    const streams: Array<[string, string | null, ByteStream]> = [];
    const inputs: Record<string, WireContent> = {};
    for (const [name, v] of Object.entries(request.inputs ?? {})) {
      if (isStream(v)) streams.push(["input", name, v]);
      else inputs[name] = wire(v);
    }
    const body: Record<string, unknown> = { ...request };
    if (request.inputs !== undefined) body.inputs = inputs;
    if (isStream(request.stdin)) {
      streams.push(["stdin", null, request.stdin]);
      delete body.stdin;
    } else if (request.stdin !== undefined) {
      body.stdin = wire(request.stdin);
    }
    if (streams.length === 0) return this.#call("POST", `/v1/runs${query}`, body, signal);

    const boundary = `nsrun-${randomBytes(12).toString("hex")}`;
    const res = await this.#transport.request({
      method: "POST",
      path: `/v1/runs${query}`,
      headers: this.#headers({ "content-type": `multipart/form-data; boundary=${boundary}` }),
      body: multipart(boundary, JSON.stringify(body), streams),
      signal,
    });
    const status = res.statusCode ?? 0;
    if (status < 200 || status > 299) throw NsrunError.fromResponse(status, await this.#read(res, signal, readText));
    return res;
  }

  /** Starts a run and returns at once (`201 {id, state}`); follow it with `events`, `get`. */
  async create(request: StreamingRunRequest, opts: CallOptions = {}): Promise<{ id: string; state: RunState }> {
    const res = await this.#post(request, "", opts.signal);
    return JSON.parse(await this.#read(res, opts.signal, readText)) as { id: string; state: RunState };
  }

  /**
   * Runs to the end and resolves with the result (`stdout`, `stderr`, `exitCode`, …), whatever the
   * tool's exit code; a run nsrun could not start resolves with reason `failed` and `error` set.
   * Rejects with {@link NsrunError} when the server refuses the request (401, 403 with `rule`, …).
   * Aborting `signal` cancels the run on the server and rejects with the signal's reason.
   */
  async run(request: StreamingRunRequest, opts: CallOptions = {}): Promise<RunResult> {
    const { signal } = opts;
    if (signal === undefined) {
      // Nothing can cancel it: one round trip.
      const res = await this.#post(request, "?wait=true", undefined);
      const run = JSON.parse(await this.#read(res, undefined, readText)) as Run;
      if (!run.result) throw new NsrunError(res.statusCode ?? 0, "bad_response", `run ${run.id} answered without a result`);
      return { ...run.result, id: run.id, state: run.state };
    }
    // Cancellable: the id first, so an abort can name the run to delete; then its end.
    for await (const ev of this.stream(request, { signal })) {
      if (ev.type === "exited") return { ...ev.result, id: ev.runId, state: stateOf(ev.result) };
    }
    throw new NsrunError(0, "bad_response", "the event stream ended without an exited event");
  }

  /**
   * Starts a run and yields its events in order: queued, pulling, started, stdout/stderr chunks
   * as they come, exited (with the result). The request is sent when the iteration starts.
   * Aborting `signal`, or leaving the loop before `exited`, cancels the run on the server.
   */
  stream(request: StreamingRunRequest, opts: CallOptions = {}): RunStream {
    const { signal } = opts;
    let setId!: (id: string) => void;
    let failId!: (err: unknown) => void;
    const id = new Promise<string>((res, rej) => {
      setId = res;
      failId = rej;
    });
    id.catch(() => {}); // Not everybody asks for it; the iterator reports the error.
    const self = this;
    async function* gen(): AsyncGenerator<Event> {
      let runId: string;
      // Creating a run is quick: it is not interrupted, so that an abort always knows the id
      // of the run to cancel. A streamed (multipart) upload may be long, and is.
      const streamed = isStream(request.stdin) || Object.values(request.inputs ?? {}).some(isStream);
      try {
        if (signal?.aborted) throw abortReason(signal);
        runId = (await self.create(request, streamed ? { signal } : {})).id;
      } catch (err) {
        failId(err);
        throw err;
      }
      setId(runId);
      if (signal?.aborted) {
        await self.cancel(runId).catch(() => {});
        throw abortReason(signal);
      }
      let ended = false;
      try {
        for await (const ev of self.events(runId, { signal })) {
          if (ev.type === "exited") ended = true;
          yield ev;
          if (ended) return;
        }
      } finally {
        if (!ended) {
          // Aborted, or the consumer left: the run is ours, so it goes.
          await self.cancel(runId).catch(() => {});
        }
      }
    }
    const it = gen();
    return { id, [Symbol.asyncIterator]: () => it };
  }

  /**
   * The events of a run (also one started elsewhere, or finished: the history is replayed first).
   * Ends after `exited`. Aborting stops watching; it does not cancel the run.
   */
  async *events(id: string, opts: EventsOptions = {}): AsyncGenerator<Event> {
    const { signal } = opts;
    const headers = this.#headers({ accept: "text/event-stream" });
    if (opts.after !== undefined) headers["last-event-id"] = String(opts.after);
    const res = await this.#transport.request({ method: "GET", path: `/v1/runs/${encodeURIComponent(id)}/events`, headers, signal });
    const status = res.statusCode ?? 0;
    if (status < 200 || status > 299) throw NsrunError.fromResponse(status, await this.#read(res, signal, readText));

    const pending: Event[] = [];
    let parseError: NsrunError | undefined;
    const parser = createParser({
      onEvent: (msg: EventSourceMessage) => {
        try {
          pending.push(toEvent(id, msg));
        } catch (err) {
          parseError ??= new NsrunError(0, "bad_response", `event ${msg.id ?? "?"}: ${(err as Error).message}`);
        }
      },
    });
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res) {
        parser.feed(decoder.decode(chunk as Buffer, { stream: true }));
        if (parseError) throw parseError;
        while (pending.length > 0) {
          const ev = pending.shift() as Event;
          yield ev;
          if (ev.type === "exited") return;
        }
      }
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      throw err;
    } finally {
      res.destroy();
    }
    if (signal?.aborted) throw abortReason(signal);
    throw new NsrunError(0, "bad_response", `the event stream of run ${id} ended before its exited event`);
  }

  /** The run's state and, once it has ended, its result. */
  get(id: string, opts: CallOptions = {}): Promise<Run> {
    return this.#json<Run>("GET", `/v1/runs/${encodeURIComponent(id)}`, undefined, opts.signal);
  }

  /**
   * Cancels a run: the server kills it and removes everything, its record included (a later
   * `get` is 404); resolves with the run as it ended.
   */
  cancel(id: string, opts: CallOptions = {}): Promise<Run> {
    return this.#json<Run>("DELETE", `/v1/runs/${encodeURIComponent(id)}`, undefined, opts.signal);
  }

  /** A file the run collected (named in the request's `outputs`). */
  async output(id: string, name: string, opts: CallOptions = {}): Promise<Buffer> {
    const path = `/v1/runs/${encodeURIComponent(id)}/outputs/${name.split("/").map(encodeURIComponent).join("/")}`;
    const res = await this.#call("GET", path, undefined, opts.signal);
    return this.#read(res, opts.signal, readBytes);
  }

  /** `GET /healthz`: true when the server answers 200. */
  async health(opts: CallOptions = {}): Promise<boolean> {
    const res = await this.#transport.request({ method: "GET", path: "/healthz", signal: opts.signal });
    await this.#read(res, opts.signal, readText);
    return res.statusCode === 200;
  }

  /** `GET /metrics`: the Prometheus text. */
  async metrics(opts: CallOptions = {}): Promise<string> {
    const res = await this.#call("GET", "/metrics", undefined, opts.signal);
    return this.#read(res, opts.signal, readText);
  }

  /** Closes idle connections (the process may then exit without waiting for their timeout). */
  close(): void {
    this.#transport.close();
  }
}

/** One SSE message → a typed event (unknown types are an error: the contract names them all). */
function toEvent(runId: string, msg: EventSourceMessage): Event {
  const seq = Number(msg.id ?? NaN);
  const data = msg.data === "" ? {} : (JSON.parse(msg.data) as Record<string, unknown>);
  switch (msg.event) {
    case "queued":
      return { type: "queued", runId, seq };
    case "pulling":
      return { type: "pulling", runId, seq, image: String(data.image ?? "") };
    case "started":
      return typeof data.setupMs === "number" ? { type: "started", runId, seq, setupMs: data.setupMs } : { type: "started", runId, seq };
    case "stdout":
    case "stderr": {
      if (typeof data.data !== "string") throw new Error(`${msg.event}: data is not base64 text`);
      const bytes = Buffer.from(data.data, "base64");
      return { type: msg.event, runId, seq, data: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
    }
    case "exited":
      return { type: "exited", runId, seq, result: data as unknown as Result };
    default:
      throw new Error(`unknown event type ${JSON.stringify(msg.event)}`);
  }
}

/** The multipart body: the JSON request first, then each stream as a part, written as read. */
async function* multipart(boundary: string, json: string, streams: Array<[string, string | null, ByteStream]>): AsyncGenerator<Uint8Array> {
  const enc = (s: string) => Buffer.from(s, "utf8");
  yield enc(`--${boundary}\r\ncontent-disposition: form-data; name="request"\r\ncontent-type: application/json\r\n\r\n${json}\r\n`);
  for (const [field, filename, stream] of streams) {
    const fn = filename === null ? "" : `; filename="${filename.replace(/["\\\r\n]/g, (c) => encodeURIComponent(c))}"`;
    yield enc(`--${boundary}\r\ncontent-disposition: form-data; name="${field}"${fn}\r\ncontent-type: application/octet-stream\r\n\r\n`);
    for await (const chunk of stream) yield chunk;
    yield enc("\r\n");
  }
  yield enc(`--${boundary}--\r\n`);
}
