import { test } from "node:test";
import assert from "node:assert/strict";
import { runAfter } from "../../js/lib/node_hooks.js";

test("runAfter calls the original first, then the extension, with the same this and arguments", () => {
  const calls = [];
  const proto = { onExecuted(output) { calls.push(["original", this.id, output]); return "kept"; } };
  runAfter(proto, "onExecuted", function (output) { calls.push(["after", this.id, output]); });
  const node = Object.assign(Object.create(proto), { id: 7 });
  assert.equal(node.onExecuted({ a: 1 }), "kept");
  assert.deepEqual(calls, [["original", 7, { a: 1 }], ["after", 7, { a: 1 }]]);
});

test("runAfter works where the host set no callback, and extensions chain in order", () => {
  const calls = [];
  const proto = {};
  runAfter(proto, "onNodeCreated", () => calls.push(1));
  runAfter(proto, "onNodeCreated", () => calls.push(2));
  assert.equal(proto.onNodeCreated(), undefined);
  assert.deepEqual(calls, [1, 2]);
});
