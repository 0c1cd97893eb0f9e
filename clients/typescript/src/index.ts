/**
 * `@nsrun/client`: a client of `nsrun serve` over a unix socket or HTTPS.
 *
 * ```ts
 * import { Client, dockerRunner } from "@nsrun/client";
 * const client = new Client({ socketPath: "/run/nsrun/nsrun.sock", token: process.env.NSRUN_TOKEN });
 * const result = await client.run({ image: "127.0.0.1:5000/tools/busybox:latest", command: ["echo", "hi"] });
 * for await (const ev of client.stream({ image: "…", command: ["ping", "-c", "3", "127.0.0.1"] })) { … }
 * const dockerLikeRun = dockerRunner(client); // ({ image, command, env, stdin, network, timeout }) → { stdout, stderr, exitCode }
 * ```
 * @packageDocumentation
 */
export { Client } from "./client.js";
export type { ClientOptions, ByteStream, StreamingRunRequest, EventsOptions, RunStream } from "./client.js";
export { NsrunError } from "./errors.js";
export type { TransportOptions } from "./transport.js";
export { dockerLikeRun, dockerRunner, dockerExitCode } from "./docker.js";
export type { DockerLikeRunOptions, DockerLikeRunResult } from "./docker.js";
export type * from "./types.js";
