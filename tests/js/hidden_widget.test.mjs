// Hiding a widget in both renderers (js/lib/hidden_widget.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { hideWidget } from "../../js/lib/hidden_widget.js";

test("the widget's own options object is marked hidden, as the Vue renderer holds it", () => {
  const options = { multiline: true };
  const widget = { name: "loras", value: "[]", options };
  const heldByRenderer = widget.options; // what the Vue node renderer's widget store keeps
  hideWidget(widget);
  assert.equal(widget.hidden, true);
  assert.equal(widget.options, heldByRenderer);
  assert.equal(heldByRenderer.hidden, true);
  assert.equal(heldByRenderer.multiline, true); // the widget's other options stay
  assert.deepEqual(widget.computeSize(), [0, -4]);
  assert.equal(widget.value, "[]"); // still serialised
});

test("a widget without options gets some", () => {
  const widget = { name: "loras" };
  hideWidget(widget);
  assert.equal(widget.options.hidden, true);
});
