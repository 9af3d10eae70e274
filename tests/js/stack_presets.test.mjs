// Named stack presets (js/lib/stack_presets.js) against a fake host. Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  createPresetStore, loadedMessage, MAX_NAME, presetNameProblem, presetUrl, rowsFromPreset,
} from "../../js/lib/stack_presets.js";

const row = (lora, on = true, m = 1, c = 1) => ({ lora, on, strength_model: m, strength_clip: c });

/** A fake host with the routes' answers (nodes/host/routes.py); records every request. */
function fakeHost(initial = {}, { fail = null } = {}) {
  const host = { presets: { ...initial }, requests: [] };
  host.request = async (method, url, body) => {
    host.requests.push([method, url, body === undefined ? undefined : JSON.parse(body)]);
    await new Promise((resolve) => setTimeout(resolve, 2));
    if (fail) return fail();
    if (url === "/loralab/stack-presets" && method === "GET") {
      return { status: 200, body: { presets: Object.keys(host.presets).sort().map((name) => ({ name, rows: host.presets[name] })) } };
    }
    const name = decodeURIComponent(url.split("/").at(-1));
    if (method === "PUT") {
      const created = !(name in host.presets);
      host.presets[name] = JSON.parse(body).rows;
      return { status: created ? 201 : 200, body: { name, rows: host.presets[name] } };
    }
    if (method === "DELETE") {
      if (!(name in host.presets)) return { status: 404, body: { error: `No stack preset named '${name}'.` } };
      delete host.presets[name];
      return { status: 200, body: { deleted: name } };
    }
    return { status: 405, body: { error: "no" } };
  };
  host.store = createPresetStore(host);
  return host;
}

test("names follow the backend's rule", () => {
  for (const good of ["portrait", "Portrait 2", "a_b.c+d-e", "x".repeat(MAX_NAME), "Ünï 漢字", "1"]) {
    assert.equal(presetNameProblem(good), null, good);
  }
  const cases = [["", /1 to 64/], ["x".repeat(MAX_NAME + 1), /65 characters/], ["..", /starts with "\."/],
    ["../etc", /starts with/], ["a/b", /"\/" cannot/], [" lead", /starts with/], ["trail ", /end with a space/],
    ["a\nb", /cannot be used/], ["a:b", /":" cannot/], [null, /1 to 64/], [7, /1 to 64/]];
  for (const [bad, why] of cases) assert.match(presetNameProblem(bad), why, String(bad));
});

test("a name is one path segment in the URL, whatever it holds", () => {
  assert.equal(presetUrl("a b+c"), "/loralab/stack-presets/a%20b%2Bc");
  assert.equal(presetUrl("../x"), "/loralab/stack-presets/..%2Fx");
});

test("the list is asked once for every node, and again on refresh", async () => {
  const host = fakeHost({ b: [row("b.safetensors")], a: [] });
  assert.equal(host.store.peek(), null);
  const [x, y] = await Promise.all([host.store.list(), host.store.list()]);
  assert.equal(x, y);
  assert.deepEqual(x.map((p) => p.name), ["a", "b"]);
  await host.store.list();
  assert.equal(host.requests.length, 1);
  await host.store.list(true);
  assert.equal(host.requests.length, 2);
  assert.deepEqual(host.store.find("b").rows, [row("b.safetensors")]);
});

test("save sends the node's rows, updates the list for every subscriber, and says what it did", async () => {
  const host = fakeHost();
  const seen = [];
  const stop = host.store.subscribe((list) => seen.push(list.map((p) => p.name)));
  const rows = [row("a.safetensors", false, 0.5, 0.25), { ...row("b.safetensors"), block_weights: "INS", extra: 1 }];
  assert.deepEqual(await host.store.save("Set B", rows), { ok: true, message: 'Saved preset "Set B" (2 rows).' });
  assert.deepEqual(host.requests[0], ["PUT", "/loralab/stack-presets/Set%20B",
    { rows: [rows[0], { ...row("b.safetensors"), block_weights: "INS" }] }], "only the backend's fields are sent");
  assert.equal((await host.store.save("a set", [row("c")])).message, 'Saved preset "a set" (1 row).');
  assert.equal((await host.store.save("Set B", [])).message, 'Replaced preset "Set B" (0 rows).');
  stop();
  await host.store.save("z", []);
  assert.deepEqual(seen, [["Set B"], ["a set", "Set B"], ["a set", "Set B"]]);
});

test("a bad name is refused without a request", async () => {
  const host = fakeHost();
  const answer = await host.store.save("../x", [row("a")]);
  assert.equal(answer.ok, false);
  assert.match(answer.message, /^A preset name/);
  assert.deepEqual(host.requests, []);
});

test("the host's refusal or a network failure is reported, never thrown", async () => {
  const refused = fakeHost({}, { fail: () => ({ status: 400, body: { error: "LoRA stack row 1: 'lora' must name a file" } }) });
  assert.deepEqual(await refused.store.save("x", [row("")]), { ok: false, message: "LoRA stack row 1: 'lora' must name a file" });
  const broken = fakeHost({}, { fail: () => ({ status: 502, body: null }) });
  assert.match((await broken.store.remove("x")).message, /HTTP 502/);
  await assert.rejects(broken.store.list(), /HTTP 502/);
  const offline = fakeHost({}, { fail: () => { throw new Error("Failed to fetch"); } });
  assert.match((await offline.store.save("x", [])).message, /Could not save preset "x": Failed to fetch/);
  assert.match((await offline.store.remove("x")).message, /Failed to fetch/);
  assert.equal(offline.store.peek(), null, "a failed save adds nothing to the list");
});

test("delete removes from the list; an already deleted preset is said so", async () => {
  const host = fakeHost({ a: [], b: [] });
  await host.store.list();
  assert.deepEqual(await host.store.remove("a"), { ok: true, message: 'Deleted preset "a".' });
  assert.deepEqual(host.store.peek().map((p) => p.name), ["b"]);
  delete host.presets.b; // deleted from another tab
  assert.deepEqual(await host.store.remove("b"), { ok: false, message: 'There is no preset "b" any more.' });
  assert.deepEqual(host.store.peek(), []);
});

test("a preset's rows become typed node rows; loading says how many are missing", () => {
  const rows = rowsFromPreset({ name: "x", rows: [{ lora: "a", strength: 0.5 }, { lora: "b", on: false }, 3] });
  assert.deepEqual(rows, [row("a", true, 0.5, 0.5), row("b", false)]);
  assert.deepEqual(rowsFromPreset({ name: "x" }), []);
  assert.equal(loadedMessage("x", rows, [false, false]), 'Loaded preset "x" (2 rows).');
  assert.equal(loadedMessage("x", rows, [true, false]), 'Loaded preset "x" (2 rows; 1 missing from the loras folders (marked in red)).');
});
