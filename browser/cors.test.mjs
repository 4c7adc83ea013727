// The API from a page of another origin, in a real browser (Debian's headless Chromium,
// driven by playwright-core): the page sends, long-polls, replays a log and follows it with
// EventSource (reconnecting by Last-Event-ID), and follows an in-memory stream; a page of an
// origin that is not listed is refused by the browser and its send never reaches a stream.
//
// Usage: node browser/cors.test.mjs SERVER_BINARY   (scripts/browser.sh runs it)
// Bounded: everything stops within LIMIT_MS, failing if it has not passed by then.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

const LIMIT_MS = 60_000;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const serverBinary = process.argv[2];
if (!serverBinary) {
  console.error("usage: node browser/cors.test.mjs SERVER_BINARY");
  process.exit(2);
}

// What the page runs, in the browser, against `api` (another origin than its own).
async function pageScript(api) {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const post = (body) =>
    fetch(`${api}/api/v1/streams/send`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  const receive = (query) => fetch(`${api}/api/v1/streams/receive?${query}`);
  // The messages an EventSource on `query` gets until `until(got)` holds, with each event's
  // id and the number of `end` events seen; `onEvent` runs after each message.
  const follow = (query, until, onEvent = () => {}) =>
    new Promise((resolve, reject) => {
      const source = new EventSource(`${api}/api/v1/streams/receive?${query}`);
      const got = { messages: [], ids: [], ends: 0 };
      const timer = setTimeout(() => {
        source.close();
        reject(new Error(`EventSource on ${query}: only ${JSON.stringify(got)}`));
      }, 15_000);
      source.onmessage = (e) => {
        got.messages.push(JSON.parse(e.data).message);
        got.ids.push(e.lastEventId);
        onEvent(got);
        if (until(got)) {
          clearTimeout(timer);
          source.close();
          resolve(got);
        }
      };
      source.addEventListener("end", (e) => {
        got.ends += 1;
        got.endCode = JSON.parse(e.data).error.code;
      });
    });

  const out = {};
  // Send and long-poll: the receive waits first, the send wakes it.
  const polled = receive("streamId=b-queue&timeoutSeconds=5").then((r) => r.json());
  await sleep(300);
  const sent = await post({ streamId: "b-queue", messageUuid: "q1", message: { hello: "browser" } });
  out.sendStatus = sent.status;
  out.requestId = sent.headers.get("X-Request-Id");
  out.polled = (await polled).message;

  // The log: written, then replayed.
  const tokens = [];
  for (const n of [1, 2]) {
    const answer = await post({ streamId: "b-log", messageUuid: `l${n}`, message: n, writeToDB: true });
    tokens.push((await answer.json()).dbResumeToken);
  }
  const replay = await receive("streamId=b-log&readFromDB=true&maxMessages=10&timeoutSeconds=0");
  out.replayed = (await replay.json()).messages.map((m) => m.message);

  // Followed with EventSource from after the first token. Each stream ends after 1 s without
  // a message; EventSource reconnects by itself with Last-Event-ID, so messages written
  // after an end still arrive, once each, in order.
  const followed = await follow(
    `streamId=b-log&readFromDB=true&timeoutSeconds=1&dbResumeToken=${tokens[0]}`,
    (got) => got.messages.length >= 3,
    async (got) => {
      const last = got.messages.at(-1);
      // Message 4 only once the stream has ended and EventSource has reconnected.
      if (last === 3) await sleep(2500);
      if (last < 4) {
        const next = last + 1;
        await post({ streamId: "b-log", messageUuid: `l${next}`, message: next, writeToDB: true });
      }
    },
  );
  out.followed = followed;
  out.firstToken = tokens[1];

  // An in-memory stream followed: one waiting receiver taking each message in turn.
  const queued = follow("streamId=b-events&timeoutSeconds=5", (got) => got.messages.length >= 2);
  await sleep(300);
  for (const n of [1, 2]) await post({ streamId: "b-events", messageUuid: `e${n}`, message: n });
  out.queued = (await queued).messages;
  return out;
}

// What a page of an origin that is not listed gets: the browser refuses the answer (and,
// for a JSON body, never sends the request after the preflight).
async function strangerScript(api) {
  try {
    await fetch(`${api}/api/v1/streams/send`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ streamId: "b-stranger", messageUuid: "s1", message: 1 }),
    });
    return "answered";
  } catch (e) {
    return `refused: ${e.name}`;
  }
}

// A static page server on loopback; its origin is `http://127.0.0.1:<port>`.
function pageServer() {
  return new Promise((resolve) => {
    const server = http.createServer((request, response) => {
      response.writeHead(200, { "content-type": "text/html" });
      response.end("<!doctype html><title>ipubsub browser test</title><p>ipubsub</p>");
    });
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

// The ipubsub node, on the embedded store, with `origin` the one CORS origin listed.
function startNode(dir, origin) {
  const config = join(dir, "node.yaml");
  writeFileSync(
    config,
    [
      "node:",
      "  name: browser-test",
      '  http_bind_addr_port: "127.0.0.1:0"',
      "storage:",
      "  embedded:",
      `    path: ${join(dir, "data")}`,
      "http:",
      "  cors:",
      `    allowed_origins: ["${origin}"]`,
      "",
    ].join("\n"),
  );
  const child = spawn(serverBinary, ["--config", config], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`ipubsub-server exited with ${code}`)));
    createInterface({ input: child.stdout }).once("line", (line) => {
      resolve({ child, api: line.trim().split(" ").pop() });
    });
  });
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), "ipubsub-browser-"));
  const pages = await pageServer();
  const strangers = await pageServer();
  const origin = `http://127.0.0.1:${pages.address().port}`;
  const strangerOrigin = `http://127.0.0.1:${strangers.address().port}`;
  const { child, api } = await startNode(dir, origin);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`${origin}/`);
    const out = await page.evaluate(pageScript, api);
    console.log(JSON.stringify(out));
    assert.equal(out.sendStatus, 200);
    assert.match(out.requestId ?? "", /^[0-9a-f]{16}-[0-9a-f]+$/, "X-Request-Id is exposed");
    assert.deepEqual(out.polled, { hello: "browser" });
    assert.deepEqual(out.replayed, [1, 2]);
    assert.deepEqual(out.followed.messages, [2, 3, 4], "followed once each, in order");
    assert.equal(out.followed.ids[0], out.firstToken, "the event id is the dbResumeToken");
    assert.ok(out.followed.ends >= 1, "the stream ended and EventSource reconnected");
    assert.equal(out.followed.endCode, "NO_MESSAGE");
    assert.deepEqual(out.queued, [1, 2]);

    const stranger = await browser.newPage();
    await stranger.goto(`${strangerOrigin}/`);
    const refused = await stranger.evaluate(strangerScript, api);
    assert.equal(refused, "refused: TypeError");
    const left = await fetch(`${api}/api/v1/streams/receive?streamId=b-stranger&timeoutSeconds=0`);
    assert.equal(left.status, 424, "the refused page's send reached the stream");
    console.log("browser test passed: CORS, long-poll, log replay, EventSource (log and queue)");
  } finally {
    await browser.close();
    child.kill("SIGTERM");
    pages.close();
    strangers.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const limit = setTimeout(() => {
  console.error(`browser test: not done within ${LIMIT_MS} ms`);
  process.exit(1);
}, LIMIT_MS);
main().then(
  () => {
    clearTimeout(limit);
    process.exit(0);
  },
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
