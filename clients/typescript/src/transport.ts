// HTTP over a unix socket (node:http with socketPath) or TCP (http/https), with keep-alive
// connections. Nothing here knows the API: requests in, responses out, errors as NsrunError.
import * as http from "node:http";
import * as https from "node:https";
import type { IncomingMessage } from "node:http";
import { NsrunError } from "./errors.js";

/** Where the server is: exactly one of `socketPath` or `url`. */
export interface TransportOptions {
  /** Unix socket of `nsrun serve --listen unix:PATH`. */
  socketPath?: string;
  /** `https://host:port` (or `http://` for a server on loopback without TLS). */
  url?: string;
  /** CA certificate(s) (PEM) to trust for an `https` url, instead of the system's. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Client certificate and key (PEM) for servers started with `--tls-client-ca` (mTLS). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Most connections kept open to the server (default 64). */
  maxSockets?: number;
}

export interface RequestOptions {
  method: string;
  path: string;
  headers?: Record<string, string>;
  /** The whole body, or a stream written as it comes (multipart). */
  body?: Buffer | string | AsyncIterable<Uint8Array>;
  signal?: AbortSignal | undefined;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("This operation was aborted", "AbortError");
}

export class Transport {
  readonly #agent: http.Agent;
  readonly #base: { protocol: "http:" | "https:"; hostname?: string; port?: string; socketPath?: string; prefix: string };
  readonly #mod: typeof http | typeof https;

  constructor(opts: TransportOptions) {
    const maxSockets = opts.maxSockets ?? 64;
    if ((opts.socketPath === undefined) === (opts.url === undefined)) {
      throw new TypeError("nsrun Client: give exactly one of socketPath or url");
    }
    if (opts.socketPath !== undefined) {
      this.#mod = http;
      this.#agent = new http.Agent({ keepAlive: true, maxSockets });
      this.#base = { protocol: "http:", socketPath: opts.socketPath, prefix: "" };
      return;
    }
    let u: URL;
    try {
      u = new URL(opts.url as string);
    } catch {
      throw new TypeError(`nsrun Client: url: not a URL: ${JSON.stringify(opts.url)}`);
    }
    if (u.protocol === "https:") {
      this.#mod = https;
      this.#agent = new https.Agent({
        keepAlive: true,
        maxSockets,
        ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
        ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
        ...(opts.key !== undefined ? { key: opts.key } : {}),
      });
    } else if (u.protocol === "http:") {
      this.#mod = http;
      this.#agent = new http.Agent({ keepAlive: true, maxSockets });
    } else {
      throw new TypeError(`nsrun Client: url: expected http: or https:, got ${u.protocol}`);
    }
    this.#base = {
      protocol: u.protocol,
      hostname: u.hostname.replace(/^\[|\]$/g, ""),
      port: u.port,
      prefix: u.pathname.replace(/\/+$/, ""),
    };
  }

  /** Sends one request; resolves with the response once its head arrived (any status). */
  request(opts: RequestOptions): Promise<IncomingMessage> {
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise((resolve, reject) => {
      const b = this.#base;
      const req = this.#mod.request({
        agent: this.#agent,
        method: opts.method,
        path: b.prefix + opts.path,
        headers: opts.headers,
        ...(b.socketPath !== undefined
          ? { socketPath: b.socketPath }
          : { protocol: b.protocol, hostname: b.hostname, port: b.port }),
      });
      let settled = false;
      const onAbort = () => {
        req.destroy();
        if (!settled) {
          settled = true;
          reject(abortReason(signal as AbortSignal));
        }
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      req.on("response", (res) => {
        settled = true;
        // The listener stays while the body is read, so an abort also ends a response stream;
        // it goes once the response is done.
        res.once("close", () => signal?.removeEventListener("abort", onAbort));
        resolve(res);
      });
      req.on("error", (err) => {
        signal?.removeEventListener("abort", onAbort);
        if (settled) return;
        settled = true;
        const where = b.socketPath ?? `${b.hostname}:${b.port}`;
        reject(new NsrunError(0, "unreachable", `nsrun serve at ${where}: ${err.message}`, undefined, { cause: err }));
      });
      const body = opts.body;
      if (body === undefined || typeof body === "string" || Buffer.isBuffer(body)) {
        req.end(body);
      } else {
        void (async () => {
          try {
            for await (const chunk of body) {
              if (!req.write(chunk)) await new Promise((r) => req.once("drain", r));
            }
            req.end();
          } catch (err) {
            req.destroy(err as Error);
          }
        })();
      }
    });
  }

  /** Closes the idle keep-alive connections. */
  close(): void {
    this.#agent.destroy();
  }
}

/** Reads a whole response body as text. */
export async function readText(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** Reads a whole response body as bytes. */
export async function readBytes(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
