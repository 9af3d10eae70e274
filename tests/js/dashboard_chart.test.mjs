// The loss chart's numbers (js/lib/dashboard_chart.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  chartModel, dotsData, downsample, ema, makeScale, MAX_POINTS, mergeRows, pathData, SMOOTHING, valueRange,
} from "../../js/lib/dashboard_chart.js";

/** A deterministic noisy, falling loss curve: [[step, loss, smoothed], ...] smoothed the trainer's way. */
function curve(steps, seed = 1) {
  let x = seed;
  const noise = () => ((x = (x * 16807) % 2147483647) / 2147483647 - 0.5) * 0.2;
  const loss = Array.from({ length: steps }, (_, i) => 0.1 + 0.5 * Math.exp(-i / 200) + noise() * 0.5);
  const smoothed = ema(loss);
  return loss.map((l, i) => [i + 1, l, smoothed[i]]);
}

test("EMA follows the trainer: starts at the first loss, then 0.9 * s + 0.1 * loss", () => {
  assert.equal(SMOOTHING, 0.9);
  const out = ema([1, 2, 3]);
  assert.equal(out[0], 1);
  assert.ok(Math.abs(out[1] - 1.1) < 1e-12);
  assert.ok(Math.abs(out[2] - (0.9 * 1.1 + 0.3)) < 1e-12);
});

test("EMA of a constant is that constant; missing values keep the last average", () => {
  assert.deepEqual(ema([0.5, 0.5, 0.5, 0.5]), [0.5, 0.5, 0.5, 0.5]);
  assert.deepEqual(ema([null, NaN, 2, null, 2]), [null, null, 2, 2, 2]);
  assert.deepEqual(ema([]), []);
  assert.throws(() => ema([1], 1), /factor/);
});

test("EMA lies between the running min and max and is smoother than its input", () => {
  const raw = curve(500).map((r) => r[1]);
  const out = ema(raw);
  let lo = Infinity;
  let hi = -Infinity;
  raw.forEach((v, i) => {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
    assert.ok(out[i] >= lo - 1e-12 && out[i] <= hi + 1e-12);
  });
  const roughness = (xs) => xs.slice(1).reduce((sum, v, i) => sum + Math.abs(v - xs[i]), 0);
  assert.ok(roughness(out) < roughness(raw) / 3);
});

test("merging rows appends newer steps, replaces equal steps, and sorts late arrivals in", () => {
  const a = [[1, 0.5, 0.5], [2, 0.4, 0.49]];
  assert.deepEqual(mergeRows(a, [[3, 0.3, 0.47]]), [...a, [3, 0.3, 0.47]]);
  assert.equal(mergeRows(a, []), a);
  assert.deepEqual(mergeRows([[5, 1, 1]], [[1, 2, 2], [3, 3, 3]]), [[1, 2, 2], [3, 3, 3], [5, 1, 1]]);
  assert.deepEqual(mergeRows(a, [[2, 9, 9]]), [[1, 0.5, 0.5], [2, 9, 9]]);
  assert.deepEqual(mergeRows([], [null, [NaN, 1], [4, 1, 1]]), [[4, 1, 1]]);
});

test("downsampling keeps at most the limit, the ends, the extremes, and x order", () => {
  for (const n of [301, 1000, 20000]) {
    const points = curve(n).map((r) => [r[0], r[1]]);
    points[Math.floor(n / 3)][1] = 5; // a spike
    points[Math.floor(n / 2)][1] = -1; // a dip
    const out = downsample(points, MAX_POINTS);
    assert.ok(out.length <= MAX_POINTS, `${n} -> ${out.length}`);
    assert.ok(out.length >= MAX_POINTS - 4, "the budget is used");
    assert.deepEqual(out[0], points[0]);
    assert.deepEqual(out.at(-1), points.at(-1));
    assert.ok(out.some((p) => p[1] === 5) && out.some((p) => p[1] === -1), "spike and dip survive");
    assert.ok(out.every((p, i) => i === 0 || p[0] > out[i - 1][0]), "x strictly increasing");
  }
});

test("downsampling short series returns a copy", () => {
  const points = [[1, 1], [2, 2]];
  const out = downsample(points, 300);
  assert.deepEqual(out, points);
  assert.notEqual(out, points);
  assert.throws(() => downsample(points, 3), /at least 4/);
});

test("value range pads both sides, widens a single value, and ignores non-finite values", () => {
  assert.deepEqual(valueRange([1, 3], { padding: 0.5 }), { min: 0, max: 4 });
  assert.deepEqual(valueRange([2, 2], { padding: 0 }), { min: 1.8, max: 2.2 });
  assert.deepEqual(valueRange([0], { padding: 0 }), { min: -1, max: 1 });
  assert.deepEqual(valueRange([null, NaN, 1, 3, Infinity], { padding: 0 }), { min: 1, max: 3 });
  assert.equal(valueRange([]), null);
  assert.equal(valueRange([null, NaN]), null);
});

test("log range drops non-positive values and pads in decades", () => {
  const r = valueRange([0.01, 1, 0, -3], { log: true, padding: 0.5 });
  assert.ok(Math.abs(Math.log10(r.min) - -3) < 1e-9 && Math.abs(Math.log10(r.max) - 1) < 1e-9);
  assert.equal(valueRange([0, -1], { log: true }), null);
  const single = valueRange([10], { log: true, padding: 0 });
  assert.ok(Math.abs(Math.log10(single.min) - 0.5) < 1e-9 && Math.abs(Math.log10(single.max) - 1.5) < 1e-9);
});

test("scales map the range onto the pixels, linearly or by decades", () => {
  const y = makeScale({ min: 0, max: 2 }, 100, 0);
  assert.equal(y(0), 100);
  assert.equal(y(2), 0);
  assert.equal(y(1), 50);
  const logY = makeScale({ min: 0.01, max: 1 }, 100, 0, true);
  assert.ok(Math.abs(logY(0.1) - 50) < 1e-9);
  assert.equal(makeScale({ min: 3, max: 3 }, 0, 10)(3), 0, "a zero span does not divide by zero");
});

test("SVG path text", () => {
  assert.equal(pathData([[0, 1], [2.25, 3]]), "M0.0,1.0L2.3,3.0");
  assert.equal(pathData([]), "");
  assert.equal(dotsData([[1, 2]]), "M1.0,2.0l0,0");
});

test("chart model: every point inside the box, lines within the point limit, x axis spans the steps drawn", () => {
  const history = curve(5000);
  const validation = [[1000, 0.3], [2000, 0.2], [3000, null]];
  const m = chartModel({ history, validation, width: 300, height: 100 });
  assert.equal(m.empty, false);
  assert.equal(m.count, 5002);
  assert.ok(m.raw.length <= MAX_POINTS && m.smoothed.length <= MAX_POINTS);
  assert.equal(m.validation.length, 2);
  for (const [x, y] of [...m.raw, ...m.smoothed, ...m.validation]) {
    assert.ok(x >= 0 && x <= 300 && y >= 0 && y <= 100, `${x},${y}`);
  }
  assert.deepEqual(m.xRange, { min: 1, max: 5000 });
  assert.equal(m.raw[0][0], 0);
  assert.equal(m.raw.at(-1)[0], 300, "the line runs across the whole chart");
  assert.deepEqual(chartModel({ history: [[7, 1, 1]] }).xRange, { min: 7, max: 8 }, "one step still has a width");
});

test("chart model: the smoothed line is the trainer's, or an EMA where the trainer sent none", () => {
  const given = chartModel({ history: [[1, 1, 1], [2, 3, 5]], height: 100 });
  const computed = chartModel({ history: [[1, 1, null], [2, 3, null]], height: 100 });
  const yOf = (m, value) => makeScale(m.yRange, 100, 0)(value);
  assert.ok(Math.abs(given.smoothed[1][1] - yOf(given, 5)) < 1e-9);
  assert.ok(Math.abs(computed.smoothed[1][1] - yOf(computed, 1.2)) < 1e-9);
});

test("chart model: nothing to draw is empty, and log scale skips losses of zero", () => {
  assert.equal(chartModel({ history: [] }).empty, true);
  assert.equal(chartModel({ history: [[1, null, null]] }).empty, true);
  const m = chartModel({ history: [[1, 0, 0], [2, 0.1, 0.01], [3, 0.01, 0.01]], log: true });
  assert.equal(m.raw.length, 2);
  assert.ok(m.yRange.min > 0);
});
