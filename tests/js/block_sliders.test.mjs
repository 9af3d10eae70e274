// The per-block sliders' logic (js/lib/block_sliders.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  blockLabel, blocksResult, blocksUrl, setWeight, sliderRows, slidersStatus, snapWeight, SLIDER, weightsText,
} from "../../js/lib/block_sliders.js";

const answer = {
  name: "a.safetensors", weights: "OUTALL", outside: 0,
  blocks: [{ block: "BASE", layers: 2, weight: 1 }, { block: "IN01", layers: 6, weight: 0 },
    { block: "M00", layers: 1, weight: 0 }, { block: "OUT04", layers: 1, weight: 1 }],
};

test("rows keep the host's order and weights, with the extension's labels", () => {
  const rows = sliderRows(answer);
  assert.deepEqual(rows.map((r) => [r.label, r.layers, r.weight]), [["TE", 2, 1], ["IN01", 6, 0], ["MID", 1, 0],
    ["OUT04", 1, 1]]);
  assert.equal(blockLabel("D03"), "D03");
  assert.deepEqual(sliderRows(null), []);
  assert.deepEqual(sliderRows({ blocks: [{ block: 3 }, { block: "S00", weight: "x" }] }).map((r) => r.weight), [1]);
});

test("a text read from a preset is written back as block=value entries with the same weights", () => {
  assert.equal(weightsText(sliderRows(answer)), "IN01=0, M00=0"); // OUTALL on this file's blocks
  assert.equal(weightsText(sliderRows({ blocks: answer.blocks.map((b) => ({ ...b, weight: 1 })) })), "");
});

test("moving one slider changes that block only, snapped to the step and clamped", () => {
  const rows = setWeight(sliderRows(answer), "M00", "0.7300000001");
  assert.deepEqual(rows.map((r) => r.weight), [1, 0, 0.75, 1]);
  assert.equal(weightsText(rows), "IN01=0, M00=0.75");
  assert.equal(weightsText(setWeight(rows, "BASE", "5")), `BASE=${SLIDER.max}, IN01=0, M00=0.75`);
  assert.equal(snapWeight(-7), SLIDER.min);
  assert.equal(snapWeight(0.1 + 0.2), 0.3);
  assert.ok(Object.is(snapWeight(-0.01), 0));
  assert.equal(snapWeight("nonsense"), 1);
  assert.equal(weightsText(setWeight(rows, "IN01", 1)), "M00=0.75");
});

test("the route URL escapes the name and the text", () => {
  assert.equal(blocksUrl("sub/a b+c%.safetensors", "MID=0, OUT03-OUT05=0.5"),
    "/loralab/loras/blocks?name=sub%2Fa%20b%2Bc%25.safetensors&weights=MID%3D0%2C%20OUT03-OUT05%3D0.5");
  assert.equal(blocksUrl("a.safetensors", undefined), "/loralab/loras/blocks?name=a.safetensors&weights=");
});

test("the status line says what the sliders cover or why there are none", () => {
  assert.match(slidersStatus({ name: "" }), /choose a LoRA/);
  assert.match(slidersStatus({ name: "a", error: "Block weights 'X': not a known preset" }), /not a known preset/);
  assert.match(slidersStatus({ name: "a", answer: null }), /reading/);
  assert.equal(slidersStatus({ name: "a", answer }), "4 block(s) in this file");
  assert.equal(slidersStatus({ name: "a", answer: { blocks: [], outside: 3 } }),
    "no layer of this file lies in a block; 3 layer(s) outside every block keep 1");
});

test("a file the host cannot read is its answer's reason, not a failed request; a refused text its message", () => {
  const read = { name: "a", readable: true, weights: "", blocks: answer.blocks, outside: 0 };
  assert.deepEqual(blocksResult(200, read), { answer: read, error: null });
  const unreadable = { name: "a", readable: false, reason: "'a' is truncated: only 20 bytes" };
  assert.deepEqual(blocksResult(200, unreadable), { answer: null, error: unreadable.reason });
  assert.deepEqual(blocksResult(400, { error: "Block weights 'X': not a known preset" }),
    { answer: null, error: "Block weights 'X': not a known preset" });
  assert.deepEqual(blocksResult(500, null), { answer: null, error: "the host answered 500" });
  assert.deepEqual(blocksResult(200, null), { answer: null, error: "the host answered 200" });
});
