// One metadata request per LoRA file name (js/lib/lora_info_cache.js), against a fake host. Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { createLoraInfoCache } from "../../js/lib/lora_info_cache.js";

const KOHYA = { ss_network_dim: "16", ss_network_alpha: "8.0", ss_base_model_version: "sd_v1",
  "modelspec.trigger_phrase": "lrlring" };

/** A fake host: `files` maps listed names to their metadata (null: no metadata); records every request. */
function fakeHost(files, { status = null, listed = Object.keys(files), addedLater = [] } = {}) {
  const host = { lists: [], fetches: [], listed: [...listed] };
  host.listNames = async (refresh) => {
    host.lists.push(refresh);
    if (refresh) host.listed.push(...addedLater.filter((n) => !host.listed.includes(n)));
    return [...host.listed];
  };
  host.fetchMetadata = async (url) => {
    host.fetches.push(url);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const name = new URL(url, "http://host").searchParams.get("filename");
    if (status) return { status, body: null };
    const metadata = files[name];
    return metadata ? { status: 200, body: metadata } : { status: 404, body: null };
  };
  host.cache = createLoraInfoCache(host);
  return host;
}

test("each file is read once, however many nodes ask at the same time", async () => {
  const host = fakeHost({ "a b.safetensors": KOHYA });
  const { cache } = host;
  assert.equal(cache.peek("a b.safetensors"), undefined);
  const answers = await Promise.all([cache.get("a b.safetensors"), cache.get("a b.safetensors")]);
  assert.equal(answers[0], answers[1]);
  assert.equal(answers[0].line, "rank 16 · alpha 8 · SD1.5 · trigger: lrlring");
  assert.equal(cache.peek("a b.safetensors"), answers[0]);
  await cache.get("a b.safetensors");
  cache.retry("a b.safetensors"); // a good answer is kept
  await cache.get("a b.safetensors");
  assert.deepEqual(host.fetches, ["/view_metadata/loras?filename=a%20b.safetensors"]);
});

test("a name the host does not list is missing without a request (a 404 would log a console error)", async () => {
  const host = fakeHost({ "a.safetensors": KOHYA });
  const [x, y] = await Promise.all([host.cache.get("gone.safetensors"), host.cache.get("other.safetensors")]);
  assert.equal(x.state, "missing");
  assert.equal(x.line, "file not found");
  assert.equal(y.state, "missing");
  assert.deepEqual(host.fetches, []);
  assert.deepEqual(host.lists.filter(Boolean), [true], "one fresh list for both names");
});

test("a file saved since the list was read is found with a fresh list", async () => {
  const host = fakeHost({ "new.safetensors": KOHYA }, { listed: [], addedLater: ["new.safetensors"] });
  assert.equal((await host.cache.get("new.safetensors")).state, "ok");
  assert.deepEqual(host.lists, [false, true]);
});

test("a missing file that appears later is read when the user chooses it again", async () => {
  const host = fakeHost({ "later.safetensors": KOHYA }, { listed: [] });
  assert.equal((await host.cache.get("later.safetensors")).state, "missing");
  host.listed.push("later.safetensors");
  assert.equal((await host.cache.get("later.safetensors")).state, "missing", "kept until a retry");
  host.cache.retry("later.safetensors");
  assert.equal((await host.cache.get("later.safetensors")).state, "ok");
});

test("the host's 404 for a listed file means it has no metadata, and is kept", async () => {
  const host = fakeHost({ "plain.safetensors": null });
  const info = await host.cache.get("plain.safetensors");
  assert.equal(info.state, "none");
  assert.equal(info.line, "no metadata");
  host.cache.retry("plain.safetensors");
  await host.cache.get("plain.safetensors");
  assert.equal(host.fetches.length, 1);
});

test("host errors and failed requests are shown, not thrown, and asked again on retry", async () => {
  const failing = fakeHost({ "a.safetensors": KOHYA }, { status: 500 });
  const info = await failing.cache.get("a.safetensors");
  assert.equal(info.state, "error");
  assert.match(info.title, /HTTP 500/);
  failing.cache.retry("a.safetensors");
  await failing.cache.get("a.safetensors");
  assert.equal(failing.fetches.length, 2);

  const offline = fakeHost({ "a.safetensors": KOHYA });
  offline.fetchMetadata = async () => { throw new TypeError("Failed to fetch"); };
  const cache = createLoraInfoCache(offline);
  const down = await cache.get("a.safetensors");
  assert.equal(down.state, "error");
  assert.match(down.title, /Failed to fetch/);
});

test("when the host cannot list its files, the metadata route still answers", async () => {
  const host = fakeHost({ "a.safetensors": KOHYA });
  host.listNames = async () => { throw new Error("GET /models/loras answered 500"); };
  const cache = createLoraInfoCache(host);
  assert.equal((await cache.get("a.safetensors")).state, "ok");
  assert.equal((await cache.get("gone.safetensors")).state, "none", "then a 404 cannot tell missing from bare");
});

test("no name shows nothing; names the route cannot serve are not asked for", async () => {
  const host = fakeHost({ "old.pt": KOHYA, "bad\udcff.safetensors": KOHYA });
  for (const name of ["", null, undefined]) {
    assert.equal(host.cache.peek(name), null);
    assert.equal(await host.cache.get(name), null);
  }
  assert.match((await host.cache.get("old.pt")).line, /not a \.safetensors file/);
  assert.equal((await host.cache.get("bad\udcff.safetensors")).state, "error");
  assert.deepEqual(host.fetches, []);
});

test("an answer that is not a metadata map reads as no metadata", async () => {
  const host = fakeHost({});
  host.listNames = async () => ["odd.safetensors"];
  host.fetchMetadata = async () => ({ status: 200, body: ["not", "a", "map"] });
  const info = await createLoraInfoCache(host).get("odd.safetensors");
  assert.equal(info.state, "none");
});
