// One info request per LoRA file name (js/lib/lora_info_cache.js), against a fake host. Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { createLoraInfoCache } from "../../js/lib/lora_info_cache.js";

const KOHYA = { format_names: ["kohya LoRA (LDM/SGM module names)"], ranks: [16], alphas: [8], alpha: 8,
  base_model: "sd_v1", base_model_hint_label: "SD 1.x", trigger_words: ["lrlring"] };
const NOT_A_LORA = "is truncated: only 20 bytes";

/**
 * A fake host: `files` maps listed names to their summary (a string: the reader's refusal, answered 200 with
 * readable: false and the reason);
 * names it does not hold get 404, as GET /loralab/loras/info answers. Records every request.
 */
function fakeHost(files, { status = null, listed = Object.keys(files), addedLater = [] } = {}) {
  const host = { lists: [], fetches: [], listed: [...listed] };
  host.listNames = async (refresh) => {
    host.lists.push(refresh);
    if (refresh) host.listed.push(...addedLater.filter((n) => !host.listed.includes(n)));
    return [...host.listed];
  };
  host.fetchInfo = async (url) => {
    host.fetches.push(url);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const name = new URL(url, "http://host").searchParams.get("name");
    if (status) return { status, body: { error: `status ${status}` } };
    const summary = files[name];
    if (typeof summary === "string") return { status: 200, body: { name, readable: false, reason: `'${name}' ${summary}` } };
    if (!summary) return { status: 404, body: { error: `No LoRA file '${name}'` } };
    return { status: 200, body: { name, readable: true, ...summary } };
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
  assert.deepEqual(host.fetches, ["/loralab/loras/info?name=a%20b.safetensors"]);
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

test("a file the host cannot read (readable: false) says why; choosing it again asks again (it may have been replaced)", async () => {
  const host = fakeHost({ "sub/bad #1.safetensors": NOT_A_LORA });
  const info = await host.cache.get("sub/bad #1.safetensors");
  assert.equal(info.state, "invalid");
  assert.equal(info.line, `not a LoRA: ${NOT_A_LORA}`);
  assert.match(info.title, /^sub\/bad #1\.safetensors\n'sub\/bad #1\.safetensors' is truncated/);
  await host.cache.get("sub/bad #1.safetensors");
  assert.equal(host.fetches.length, 1, "kept until a retry");
  host.cache.retry("sub/bad #1.safetensors");
  await host.cache.get("sub/bad #1.safetensors");
  assert.deepEqual(host.fetches, Array(2).fill("/loralab/loras/info?name=sub%2Fbad%20%231.safetensors"));
});

test("a listed file removed before its request reads as missing (the host's 404)", async () => {
  const host = fakeHost({}, { listed: ["removed.safetensors"] });
  const info = await host.cache.get("removed.safetensors");
  assert.equal(info.state, "missing");
  assert.equal(host.fetches.length, 1);
});

test("host errors and failed requests are shown, not thrown, and asked again on retry", async () => {
  const failing = fakeHost({ "a.safetensors": KOHYA }, { status: 500 });
  const info = await failing.cache.get("a.safetensors");
  assert.equal(info.state, "error");
  assert.match(info.title, /HTTP 500: status 500/);
  failing.cache.retry("a.safetensors");
  await failing.cache.get("a.safetensors");
  assert.equal(failing.fetches.length, 2);

  const offline = fakeHost({ "a.safetensors": KOHYA });
  offline.fetchInfo = async () => { throw new TypeError("Failed to fetch"); };
  const cache = createLoraInfoCache(offline);
  const down = await cache.get("a.safetensors");
  assert.equal(down.state, "error");
  assert.match(down.title, /Failed to fetch/);
});

test("when the host cannot list its files, the info route still answers", async () => {
  const host = fakeHost({ "a.safetensors": KOHYA });
  host.listNames = async () => { throw new Error("GET /models/loras answered 500"); };
  const cache = createLoraInfoCache(host);
  assert.equal((await cache.get("a.safetensors")).state, "ok");
  assert.equal((await cache.get("gone.safetensors")).state, "missing", "the route's 404 tells");
});

test("no name shows nothing; names the route cannot serve are not asked for", async () => {
  const host = fakeHost({ "old.pt": KOHYA, "bad\udcff.safetensors": KOHYA });
  for (const name of ["", null, undefined]) {
    assert.equal(host.cache.peek(name), null);
    assert.equal(await host.cache.get(name), null);
  }
  assert.equal((await host.cache.get("old.pt")).line, "not a LoRA: pickle files are not read");
  assert.equal((await host.cache.get("bad\udcff.safetensors")).state, "error");
  assert.deepEqual(host.fetches, []);
});

test("an answer that is not a summary is shown as a failure, asked again on retry", async () => {
  const host = fakeHost({});
  host.listNames = async () => ["odd.safetensors"];
  host.fetchInfo = async () => ({ status: 200, body: ["not", "a", "map"] });
  const info = await createLoraInfoCache(host).get("odd.safetensors");
  assert.equal(info.state, "error");
});
