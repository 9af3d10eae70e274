// Invariants of the Stack LoRAs row logic (js/lib/stack_rows.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addRow, clampStrength, missingRows, missingTitle, moveRow, newRow, parseRows, removeRow, serializeRows, setBlockWeights,
  setName, setStrength,
  toggleRow,
} from "../../js/lib/stack_rows.js";

const row = (lora, on = true, m = 1, c = 1) => ({ lora, on, strength_model: m, strength_clip: c });
const abc = [row("a.safetensors"), row("b.safetensors", false, 0.5, 0.25), row("c.safetensors")];

test("parse -> serialise round-trips the backend's row format", () => {
  const text = serializeRows(abc);
  assert.deepEqual(parseRows(text), { rows: abc, error: null });
  assert.equal(serializeRows(parseRows(text).rows), text);
  assert.deepEqual(JSON.parse(text)[1], { lora: "b.safetensors", on: false, strength_model: 0.5, strength_clip: 0.25 });
});

test("empty or default text is no rows and no error", () => {
  for (const text of ["", "  ", "[]", undefined, null]) assert.deepEqual(parseRows(text), { rows: [], error: null });
});

test("bad text gives no rows and an error instead of throwing", () => {
  for (const text of ["{", "not json", "{\"lora\": \"a\"}", "42", "null"]) {
    const { rows, error } = parseRows(text);
    assert.deepEqual(rows, []);
    assert.match(error, /JSON/, text);
  }
});

test("non-object entries are dropped and reported, good rows kept", () => {
  const { rows, error } = parseRows('[1, {"lora": "a.safetensors"}, "x"]');
  assert.deepEqual(rows, [row("a.safetensors")]);
  assert.match(error, /2 entries/);
});

test("missing fields take the backend's defaults; unknown fields are dropped", () => {
  const { rows } = parseRows(JSON.stringify([
    { lora: "a" }, { lora: "b", strength: 0.3 }, { lora: "c", strength_model: 0.7 }, { lora: "d", extra: 1, on: false },
  ]));
  assert.deepEqual(rows, [row("a"), row("b", true, 0.3, 0.3), row("c", true, 0.7, 0.7), row("d", false)]);
});

test("clampStrength rounds to 0.01, clamps to +-100, rejects non-numbers", () => {
  assert.equal(clampStrength(0.123), 0.12);
  assert.equal(clampStrength(0.1 + 0.2), 0.3);
  assert.equal(clampStrength("0.555"), 0.56);
  assert.equal(clampStrength(1e6), 100);
  assert.equal(clampStrength(-1e6), -100);
  assert.ok(Object.is(clampStrength(-0.001), 0), "no negative zero in the JSON");
  for (const bad of [NaN, Infinity, "", "abc", null, undefined, true, {}]) assert.equal(clampStrength(bad), null, String(bad));
});

test("add appends the first listed LoRA, on, at 1.0/1.0", () => {
  assert.deepEqual(newRow(["x.safetensors", "y.safetensors"]), row("x.safetensors"));
  assert.deepEqual(newRow([]), row(""));
  const rows = addRow(abc, ["x.safetensors"]);
  assert.equal(rows.length, 4);
  assert.deepEqual(rows.at(-1), row("x.safetensors"));
});

test("remove drops exactly one row; out of range is a no-op", () => {
  assert.deepEqual(removeRow(abc, 1), [abc[0], abc[2]]);
  assert.deepEqual(removeRow(abc, 7), abc);
});

test("move swaps neighbours and stops at the ends", () => {
  assert.deepEqual(moveRow(abc, 2, -1).map((r) => r.lora), ["a.safetensors", "c.safetensors", "b.safetensors"]);
  assert.deepEqual(moveRow(abc, 0, 1).map((r) => r.lora), ["b.safetensors", "a.safetensors", "c.safetensors"]);
  assert.deepEqual(moveRow(abc, 0, -1), abc);
  assert.deepEqual(moveRow(abc, 2, 1), abc);
  assert.deepEqual(moveRow(abc, 9, -1), abc);
});

test("toggle flips, or sets when told", () => {
  assert.equal(toggleRow(abc, 0)[0].on, false);
  assert.equal(toggleRow(abc, 1)[1].on, true);
  assert.equal(toggleRow(abc, 0, true)[0].on, true);
});

test("setStrength clamps and rounds; junk keeps the old value", () => {
  assert.equal(setStrength(abc, 0, "model", 0.456)[0].strength_model, 0.46);
  assert.equal(setStrength(abc, 0, "clip", "-250")[0].strength_clip, -100);
  assert.equal(setStrength(abc, 0, "clip", "x")[0].strength_clip, 1);
  assert.throws(() => setStrength(abc, 0, "unet", 1), /model.*clip/);
});

test("setName changes only that row", () => {
  const rows = setName(abc, 2, "z.safetensors");
  assert.equal(rows[2].lora, "z.safetensors");
  assert.deepEqual(rows.slice(0, 2), abc.slice(0, 2));
});

test("edits never mutate their input", () => {
  const before = structuredClone(abc);
  addRow(abc, ["x"]); removeRow(abc, 0); moveRow(abc, 0, 1); toggleRow(abc, 0);
  setStrength(abc, 0, "model", 3); setName(abc, 0, "q"); setBlockWeights(abc, 0, "INS");
  assert.deepEqual(abc, before);
});

test("block weights survive parse -> edit -> serialise, and rows without them are written as before", () => {
  const text = '[{"lora":"a","on":true,"strength_model":1,"strength_clip":1,"block_weights":" MID=0, OUT05=0.5 "},'
    + '{"lora":"b","block_weights":""},{"lora":"c","block_weights":17}]';
  const { rows } = parseRows(text);
  assert.deepEqual(rows, [{ ...row("a"), block_weights: "MID=0, OUT05=0.5" }, row("b"), row("c")]);
  const edited = setStrength(rows, 0, "model", 0.5); // an edit elsewhere keeps them
  assert.deepEqual(JSON.parse(serializeRows(edited))[0],
    { lora: "a", on: true, strength_model: 0.5, strength_clip: 1, block_weights: "MID=0, OUT05=0.5" });
  assert.deepEqual(Object.keys(JSON.parse(serializeRows(edited))[1]), ["lora", "on", "strength_model", "strength_clip"]);
  assert.equal(serializeRows(parseRows(serializeRows(edited)).rows), serializeRows(edited));
});

test("setBlockWeights sets, trims and clears one row's text", () => {
  const set = setBlockWeights(abc, 1, "  INS ");
  assert.equal(set[1].block_weights, "INS");
  assert.deepEqual([set[0], set[2]], [abc[0], abc[2]]);
  assert.deepEqual(setBlockWeights(set, 1, " "), abc);
  assert.ok(!("block_weights" in setBlockWeights(set, 1, "")[1]));
  assert.deepEqual(setBlockWeights(abc, 9, "INS"), abc);
  assert.deepEqual(setBlockWeights(abc, 0, 5), abc);
});

test("rows naming a LoRA the host does not list are marked missing, once the list is known", () => {
  const rows = [row("a.safetensors"), row("gone.safetensors"), row(""), row("sub/b.safetensors", false)];
  assert.deepEqual(missingRows(rows, ["a.safetensors", "sub/b.safetensors"]), [false, true, false, false]);
  assert.deepEqual(missingRows(rows, []), [true, true, false, true], "an empty loras folder lacks every file");
  assert.deepEqual(missingRows(rows, null), [false, false, false, false], "not known yet: nothing is marked");
  assert.deepEqual(missingRows([], ["a"]), []);
  assert.match(missingTitle("gone.safetensors"), /"gone.safetensors" is not in the host's loras folders/);
});
