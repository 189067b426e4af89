// A sesscache client in a second language: Node's @grpc/grpc-js.
//
//   node tests/node/client.mjs HOST:PORT [--deadline-ms N] [--length N]
//                                         [--huge-length N]
//
// --length sets the length of steps 2 and 3, --huge-length of 4.
//
// Runs one scenario on ONE client (so one channel, one HTTP/2 connection) and
// prints one JSON line with what each step saw; tests/test_grpc_js.py asserts
// on it. grpc-js handles oversized trailers differently from C-core (the
// Python client): instead of failing the one call, a grpc-js connection can
// stall, so that every later call on the channel hangs. The scenario:
//
//   1. QueryPersons name "person 10" twice in session js-<random>: MISS, HIT.
//   2. ListCacheKeys with a `region` of 5,000 characters: an error; its code,
//      details length and trailer size. (C-core fails such a call with
//      RESOURCE_EXHAUSTED "Stream removed" once trailers pass 8 KiB.)
//   3. ListCacheKeys with a `session` (an admin's handle of another session)
//      of 5,000 characters: the same checks.
//   4. ListCacheKeys with a `region` of 50,000 characters. When messages
//      quote the whole value, trailers from about 32,000 characters on (some
//      115 KB) make Node's HTTP/2 layer send GOAWAY COMPRESSION_ERROR, which
//      grpc-js does not act on: this call and every later one on the
//      channel wait for their deadline (seen with Node 20, grpc-js 1.14).
//   5. On the same client, a normal ListCacheKeys: must succeed in time.
//   6. EndSession: the session existed.
//
// Every call has a deadline, so a stall shows as DEADLINE_EXCEEDED, never as
// a hang. Set up with `make node-deps` (npm install in this directory).

import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTOS = path.resolve(HERE, "..", "..", "protos");
const PROTO = "sesscache/v1/sesscache.proto";

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node client.mjs HOST:PORT [--deadline-ms N] [--length N]` +
      " [--huge-length N]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const options = { target: null, deadlineMs: 5000, length: 5000, hugeLength: 50000 };
  const numeric = {
    "--deadline-ms": "deadlineMs",
    "--length": "length",
    "--huge-length": "hugeLength",
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (Object.hasOwn(numeric, arg)) {
      const value = Number.parseInt(argv[i + 1] ?? "", 10);
      if (!Number.isInteger(value) || value <= 0) usage(`${arg} needs a positive integer`);
      options[numeric[arg]] = value;
      i += 1;
    } else if (arg.startsWith("-")) {
      usage(`unknown option ${arg}`);
    } else if (options.target === null) {
      options.target = arg;
    } else {
      usage(`unexpected argument ${arg}`);
    }
  }
  if (options.target === null) usage("missing target");
  return options;
}

function loadService() {
  // keepCase: field names as in the .proto (cache_status, total_size).
  // includeDirs: resolves the import of sesscache/v1/sesscache.proto; the
  // google/protobuf imports come from protobufjs's bundled well-known types.
  const definition = protoLoader.loadSync(PROTO, {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).sesscache.v1.SessionCache;
}

// Bytes of a grpc-message value on the wire: percent-encoded UTF-8, where
// bytes outside 0x20-0x7E and '%' itself take three.
function percentEncodedLength(text) {
  let length = 0;
  for (const byte of Buffer.from(text, "utf8")) {
    length += byte < 0x20 || byte > 0x7e || byte === 0x25 ? 3 : 1;
  }
  return length;
}

// Key + value bytes of the metadata grpc-js hands over with an error (it
// keeps grpc-status and grpc-message apart). A binary (-bin) value counts as
// its base64 text, as it travels.
function metadataSize(metadata) {
  const keys = [];
  let bytes = 0;
  if (!metadata) return { keys, bytes };
  for (const [key, values] of Object.entries(metadata.toJSON())) {
    keys.push(key);
    for (const value of values) {
      const valueBytes = Buffer.isBuffer(value)
        ? Math.ceil(value.length / 3) * 4
        : Buffer.byteLength(String(value), "utf8");
      bytes += key.length + valueBytes;
    }
  }
  return { keys, bytes };
}

const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, code]) => [code, name]),
);

function describeError(error) {
  const details = typeof error.details === "string" ? error.details : String(error.message);
  const { keys, bytes } = metadataSize(error.metadata);
  const code = typeof error.code === "number" ? error.code : null;
  return {
    ok: false,
    code,
    code_name: code === null ? null : (CODE_NAMES[code] ?? String(code)),
    details: details.length > 300 ? `${details.slice(0, 300)}... (${details.length} characters)` : details,
    details_length: details.length,
    metadata_keys: keys,
    metadata_bytes: bytes,
    // The whole trailer block as sent: the metadata above plus grpc-status
    // and grpc-message (which grpc-js has decoded into code and details).
    trailer_bytes:
      bytes +
      "grpc-status".length +
      String(code ?? "").length +
      "grpc-message".length +
      percentEncodedLength(details),
  };
}

// One unary call with a deadline; resolves to {ok, ms, response | error fields}.
function call(client, method, request, metadata, deadlineMs) {
  const started = Date.now();
  return new Promise((resolve) => {
    client[method](
      request,
      metadata,
      { deadline: new Date(started + deadlineMs) },
      (error, response) => {
        const ms = Date.now() - started;
        if (error) resolve({ ...describeError(error), ms });
        else resolve({ ok: true, ms, response });
      },
    );
  });
}

async function scenario(options) {
  const SessionCache = loadService();
  const client = new SessionCache(options.target, grpc.credentials.createInsecure());
  const sessionId = `js-${randomBytes(8).toString("hex")}`;
  const metadata = new grpc.Metadata();
  metadata.set("session-id", sessionId);
  const { deadlineMs } = options;
  const result = {
    target: options.target,
    session_id: sessionId,
    grpc_js_version: createRequire(import.meta.url)("@grpc/grpc-js/package.json").version,
    node_version: process.version,
    deadline_ms: deadlineMs,
    steps: {},
  };
  const { steps } = result;
  try {
    for (const step of ["query_first", "query_again"]) {
      const outcome = await call(client, "QueryPersons", { name: "person 10" }, metadata, deadlineMs);
      if (outcome.ok) {
        const { response } = outcome;
        steps[step] = {
          ok: true,
          ms: outcome.ms,
          cache_status: response.cache_status,
          persons: response.persons.map((person) => person.name),
          sql_statements: response.sql_statements,
        };
      } else {
        steps[step] = outcome;
      }
    }

    for (const [step, field, length] of [
      ["oversized_region", "region", options.length],
      ["oversized_handle", "session", options.length],
      ["huge_region", "region", options.hugeLength],
    ]) {
      const request = { [field]: field[0].repeat(length) };
      const outcome = await call(client, "ListCacheKeys", request, metadata, deadlineMs);
      steps[step] = outcome.ok
        ? { ok: true, ms: outcome.ms, total_size: outcome.response.total_size, field, length }
        : { ...outcome, field, length };
    }

    // The same client, so the same channel and connection: a stalled
    // connection shows here as DEADLINE_EXCEEDED.
    const followUp = await call(client, "ListCacheKeys", {}, metadata, deadlineMs);
    steps.follow_up = followUp.ok
      ? {
          ok: true,
          ms: followUp.ms,
          total_size: followUp.response.total_size,
          regions: followUp.response.entries.map((entry) => entry.region),
        }
      : followUp;

    const ended = await call(client, "EndSession", {}, metadata, deadlineMs);
    steps.end_session = ended.ok
      ? {
          ok: true,
          ms: ended.ms,
          existed: ended.response.existed,
          keys_dropped: ended.response.keys_dropped,
        }
      : ended;
  } finally {
    client.close();
  }
  return result;
}

const options = parseArgs(process.argv.slice(2));
try {
  const result = await scenario(options);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  // A stalled connection can keep the event loop alive: leave regardless.
  process.exit(0);
} catch (error) {
  process.stderr.write(`client.mjs: ${error?.stack ?? error}\n`);
  process.exit(1);
}
