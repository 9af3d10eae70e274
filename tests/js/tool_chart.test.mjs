// The LoRA tools' chart model (js/lib/tool_chart.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { chartLayers, chartSummary, layerCaption, toolChartModel, worstLayer } from "../../js/lib/tool_chart.js";

const payload = {
  rule: "fixed 2",
  layers: [
    { prefix: "lora_unet_a", rank: 2, input_rank: 4, kept_share: 0.9, spectrum: [8, 4, 2, 1] },
    { prefix: "lora_te_b", rank: 2, input_rank: 4, kept_share: 0.5, spectrum: [1, 1, 1, 1] },
    { prefix: "lora_unet_c", rank: 1, input_rank: null, kept_share: 1, spectrum: [] },
  ],
};

test("layers are read defensively and the worst-kept one with a spectrum is shown first", () => {
  const layers = chartLayers(payload);
  assert.equal(layers.length, 3);
  assert.equal(worstLayer(layers), 1);
  assert.equal(worstLayer(chartLayers({ layers: [payload.layers[2]] })), 0); // no spectrum anywhere: the first
  assert.equal(worstLayer([]), -1);
  assert.deepEqual(chartLayers({ layers: [{ prefix: 1 }, null, { prefix: "x", rank: 1, kept_share: 1.2 }] })
    .map((l) => l.keptShare), [1]);
  assert.deepEqual(chartLayers(null), []);
});

test("each bar is as tall as its layer's kept share; the selected one is marked", () => {
  const { bars } = toolChartModel(chartLayers(payload), 1, { width: 300, height: 100 });
  assert.deepEqual(bars.map((b) => [b.x, b.height, Math.round(b.y * 1e6) / 1e6, b.selected]),
    [[0, 90, 10, false], [100, 50, 50, true], [200, 100, 0, false]]);
  assert.ok(bars.every((b) => b.width > 98 && b.width <= 100));
});

test("the spectrum is split at the rank kept, on a log scale", () => {
  const model = toolChartModel(chartLayers(payload), 0, { width: 300, height: 100 });
  assert.equal(model.values, 4);
  assert.equal(model.keptPath.split("L").length, 2); // two values kept
  assert.equal(model.cutPath.split("L").length, 3); // from the last kept one through the two left out
  assert.equal(model.cutX, 150); // between value 2 (x 100) and value 3 (x 200)
  // log scale: 8, 4, 2, 1 are evenly spaced in y
  const ys = [...model.keptPath.matchAll(/[ML][\d.]+,([\d.]+)/g), ...model.cutPath.matchAll(/L[\d.]+,([\d.]+)/g)]
    .map((m) => Number(m[1]));
  const steps = ys.slice(1).map((y, i) => y - ys[i]);
  assert.ok(steps.every((s) => Math.abs(s - steps[0]) < 0.2), ys);
});

test("a layer kept whole has no cut; no layer selected draws no spectrum", () => {
  const whole = toolChartModel(chartLayers({ layers: [{ ...payload.layers[0], rank: 4 }] }), 0);
  assert.equal(whole.cutX, null);
  assert.equal(whole.cutPath, "");
  assert.deepEqual(toolChartModel(chartLayers(payload), -1).keptPath, "");
  assert.deepEqual(toolChartModel([], -1).bars, []);
});

test("captions and the summary line", () => {
  const layers = chartLayers(payload);
  assert.equal(layerCaption(layers[0]), "a: rank 4 -> 2, keeps 90.0%");
  assert.equal(layerCaption(layers[2]), "c: rank 1, keeps 100.0%");
  assert.equal(chartSummary(layers, "fixed 2"), "fixed 2 · 3 layers · mean kept 80.0% · lowest 50.0%");
  assert.equal(chartSummary([], "fixed 2"), "no layer was factorised");
});
