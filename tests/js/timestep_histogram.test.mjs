// The timestep histogram's numbers (js/lib/timestep_histogram.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BAR_GAP, binEdges, binLabel, histogramModel, isHistogram, MIN_BAR_HEIGHT,
} from "../../js/lib/timestep_histogram.js";

/** The trainer's binning (trainer/jobs.py Job.record_timesteps): t * bins // num_timesteps. */
const trainerBin = (t, bins, numTimesteps) => Math.floor((t * bins) / numTimesteps);

/** Seeded draws in [lo, hi), counted into `bins` bins the trainer's way: the snapshot's histogram. */
function drawnHistogram({ draws, lo = 0, hi = 1000, numTimesteps = 1000, bins = 20, seed = 7, sampling }) {
  let x = seed;
  const next = () => (x = (x * 16807) % 2147483647) / 2147483647;
  const counts = new Array(bins).fill(0);
  for (let i = 0; i < draws; i += 1) counts[trainerBin(lo + Math.floor(next() * (hi - lo)), bins, numTimesteps)] += 1;
  return { range: [0, numTimesteps], counts, ...(sampling === undefined ? {} : { sampling }) };
}

test("a bin's edges hold exactly the timesteps the trainer counts into it", () => {
  for (const [numTimesteps, bins] of [[1000, 20], [37, 20], [20, 20], [1001, 7]]) {
    for (let t = 0; t < numTimesteps; t += 1) {
      const i = trainerBin(t, bins, numTimesteps);
      const { lo, hi } = binEdges(i, bins, [0, numTimesteps]);
      assert.ok(lo <= t && t < hi, `T=${numTimesteps}, bins=${bins}: t=${t} counted in bin ${i} = [${lo}, ${hi})`);
    }
    assert.equal(binEdges(0, bins, [0, numTimesteps]).lo, 0);
    assert.equal(binEdges(bins - 1, bins, [0, numTimesteps]).hi, numTimesteps);
  }
  assert.deepEqual(binEdges(6, 20, [0, 1000]), { lo: 300, hi: 350 });
  assert.deepEqual(binEdges(1, 4, [100, 200]), { lo: 125, hi: 150 }, "a range that does not start at 0");
});

test("a bar's tooltip names its timesteps, last one inclusive, and its draws", () => {
  assert.equal(binLabel({ lo: 300, hi: 350 }, 5), "t 300–349: 5 draws");
  assert.equal(binLabel({ lo: 3, hi: 4 }, 1), "t 3: 1 draw");
});

test("before the first step the histogram is empty and draws nothing", () => {
  for (const histogram of [null, undefined, { range: [0, 1000], counts: new Array(20).fill(0) }]) {
    const model = histogramModel(histogram);
    assert.equal(model.empty, true);
    assert.equal(model.total, 0);
    assert.deepEqual(model.bars, []);
  }
  assert.deepEqual(histogramModel(null).ticks, []);
  assert.deepEqual(histogramModel({ range: [0, 1000], counts: new Array(20).fill(0) }).ticks.map((t) => t.label),
    ["0", "500", "1000"], "the axis shows once the trainer has said the range");
});

test("malformed histograms are refused as empty, not drawn wrong", () => {
  for (const bad of [{}, { range: [0, 1000] }, { range: [1000, 0], counts: [1] }, { range: [0, 1000], counts: [] },
    { range: [0, 1000], counts: [1, -1] }, { range: [0, 1000], counts: [1.5] }, { range: [0], counts: [1] }]) {
    assert.equal(isHistogram(bad), false, JSON.stringify(bad));
    assert.equal(histogramModel(bad).empty, true);
  }
  assert.equal(isHistogram({ range: [0, 1000], counts: [0, 3] }), true);
});

test("one bar per bin with draws, its count and timesteps the snapshot's, height proportional to the tallest", () => {
  const histogram = drawnHistogram({ draws: 500 });
  const width = 300;
  const height = 40;
  const model = histogramModel(histogram, { width, height });
  assert.equal(model.empty, false);
  assert.equal(model.total, 500);
  const maxCount = Math.max(...histogram.counts);
  assert.equal(model.maxCount, maxCount);
  const withDraws = histogram.counts.map((c, i) => [i, c]).filter(([, c]) => c > 0);
  assert.deepEqual(model.bars.map((b) => [b.index, b.count]), withDraws);
  const binWidth = width / 20;
  for (const bar of model.bars) {
    assert.deepEqual({ lo: bar.lo, hi: bar.hi }, { lo: bar.index * 50, hi: bar.index * 50 + 50 });
    assert.ok(Math.abs(bar.height - (bar.count / maxCount) * height) < 1e-9);
    assert.ok(Math.abs(bar.y + bar.height - height) < 1e-9, "bars stand on the bottom edge");
    assert.ok(Math.abs(bar.x - (bar.index + BAR_GAP / 2) * binWidth) < 1e-9);
    assert.ok(Math.abs(bar.width - binWidth * (1 - BAR_GAP)) < 1e-9);
    assert.ok(bar.x >= 0 && bar.x + bar.width <= width);
  }
  assert.equal(Math.min(...model.bars.map((b) => b.y)), 0, "the tallest bar fills the height");
});

test("a run drawing only inside [min_timestep, max_timestep) has bars only there", () => {
  const model = histogramModel(drawnHistogram({ draws: 200, lo: 300, hi: 700 }), { width: 300, height: 40 });
  assert.ok(model.bars.length > 0);
  for (const bar of model.bars) assert.ok(bar.lo >= 300 && bar.hi <= 700, `bar [${bar.lo}, ${bar.hi})`);
  assert.deepEqual(model.bars.map((b) => b.index), [6, 7, 8, 9, 10, 11, 12, 13]);
  assert.equal(model.bars.reduce((sum, b) => sum + b.count, 0), 200);
  const left = 300 * (6 + BAR_GAP / 2) / 20;
  assert.ok(Math.abs(model.bars[0].x - left) < 1e-9, "the first bar starts at timestep 300 of the axis");
});

test("a single draw among many stays visible", () => {
  const counts = new Array(20).fill(0);
  counts[0] = 100000;
  counts[19] = 1;
  const model = histogramModel({ range: [0, 1000], counts }, { width: 300, height: 40 });
  assert.equal(model.bars[1].height, MIN_BAR_HEIGHT);
  assert.equal(model.bars[1].y, 40 - MIN_BAR_HEIGHT);
});

test("axis ticks sit at the range's ends and middle, labelled in timesteps", () => {
  const model = histogramModel({ range: [0, 1000], counts: [1, 2] });
  assert.deepEqual(model.ticks, [{ at: 0, label: "0" }, { at: 0.5, label: "500" }, { at: 1, label: "1000" }]);
  const odd = histogramModel({ range: [0, 37], counts: [1] });
  assert.deepEqual(odd.ticks.map((t) => t.label), ["0", "19", "37"]);
  assert.ok(Math.abs(odd.ticks[1].at - 19 / 37) < 1e-12, "the middle label stands where its timestep is");
});

test("the caption names the run's distribution when the snapshot carries it", () => {
  assert.equal(histogramModel(drawnHistogram({ draws: 3, sampling: "logit_normal" })).caption,
    "timesteps drawn · logit_normal");
  assert.equal(histogramModel(drawnHistogram({ draws: 3, sampling: "logit_normal" })).sampling, "logit_normal");
  assert.equal(histogramModel(drawnHistogram({ draws: 3, sampling: null })).caption, "timesteps drawn");
  assert.equal(histogramModel(drawnHistogram({ draws: 3 })).sampling, "");
  assert.equal(histogramModel({ range: [0, 1000], counts: [0], sampling: "uniform" }).caption,
    "timesteps drawn · uniform", "named in the empty state too");
});
