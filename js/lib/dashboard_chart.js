// The dashboard's loss chart as numbers: EMA smoothing, history merging, downsampling, axis ranges,
// scales and SVG path text. Pure, no DOM: the view turns `chartModel`'s output into <path> elements.
//
// Loss history arrives as the route's rows, [[step, loss, smoothed], ...] (validation: [[step, loss]]);
// a loss of null is a step whose loss was not finite and is left out of the lines.

/** The trainer's smoothing factor (trainer/loop.py SMOOTHING): s = 0.9 * s + 0.1 * loss, s0 = loss0. */
export const SMOOTHING = 0.9;
export const MAX_POINTS = 300;

const finite = (value) => typeof value === "number" && Number.isFinite(value);

/**
 * The trainer's EMA over `values`, one output per input. A missing (non-finite) value keeps the
 * previous average, and gives null before the first real value.
 */
export function ema(values, factor = SMOOTHING) {
  if (!(factor >= 0 && factor < 1)) throw new RangeError(`EMA factor must be in [0, 1), got ${factor}`);
  let smoothed = null;
  return values.map((value) => {
    if (finite(value)) smoothed = smoothed === null ? value : factor * smoothed + (1 - factor) * value;
    return smoothed;
  });
}

/**
 * Rows keyed by their first element (the step), sorted by step; a row of `incoming` replaces an
 * `existing` row of the same step. Appending newer rows (the usual live case) costs no sort.
 */
export function mergeRows(existing, incoming) {
  const rows = incoming.filter((r) => Array.isArray(r) && finite(r[0]));
  if (rows.length === 0) return existing;
  const last = existing.length ? existing[existing.length - 1][0] : -Infinity;
  const ordered = rows.every((r, i) => r[0] > (i ? rows[i - 1][0] : last));
  if (ordered) return existing.concat(rows);
  const byStep = new Map(existing.map((r) => [r[0], r]));
  for (const r of rows) byStep.set(r[0], r);
  return [...byStep.values()].sort((a, b) => a[0] - b[0]);
}

/**
 * At most `maxPoints` of the [x, y] points (sorted by x), keeping the first, the last, and each
 * bucket's lowest and highest y in x order: spikes and dips survive, so the chart does not lie.
 */
export function downsample(points, maxPoints = MAX_POINTS) {
  if (maxPoints < 4) throw new RangeError(`downsample needs room for at least 4 points, got ${maxPoints}`);
  if (points.length <= maxPoints) return points.slice();
  const inner = points.slice(1, -1);
  const buckets = Math.floor((maxPoints - 2) / 2);
  const out = [points[0]];
  for (let b = 0; b < buckets; b += 1) {
    const chunk = inner.slice(Math.floor((b * inner.length) / buckets), Math.floor(((b + 1) * inner.length) / buckets));
    if (chunk.length === 0) continue;
    let lo = chunk[0];
    let hi = chunk[0];
    for (const p of chunk) {
      if (p[1] < lo[1]) lo = p;
      if (p[1] > hi[1]) hi = p;
    }
    if (lo === hi) out.push(lo);
    else out.push(...(lo[0] <= hi[0] ? [lo, hi] : [hi, lo]));
  }
  out.push(points[points.length - 1]);
  return out;
}

/**
 * The axis range {min, max} covering the finite `values`, widened by `padding` (a share of the span)
 * on each side; null when there is nothing to show. With `log`, only positive values count and the
 * padding is applied in log space. A single value gets a range around it.
 */
export function valueRange(values, { padding = 0.05, log = false } = {}) {
  const usable = values.filter((v) => finite(v) && (!log || v > 0));
  if (usable.length === 0) return null;
  let lo = Math.min(...usable);
  let hi = Math.max(...usable);
  if (log) {
    let [a, b] = [Math.log10(lo), Math.log10(hi)];
    if (a === b) [a, b] = [a - 0.5, b + 0.5];
    const pad = (b - a) * padding;
    return { min: 10 ** (a - pad), max: 10 ** (b + pad) };
  }
  if (lo === hi) {
    const half = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    [lo, hi] = [lo - half, hi + half];
  }
  const pad = (hi - lo) * padding;
  return { min: lo - pad, max: hi + pad };
}

/** Maps a value in `range` to a pixel between `from` and `to` (from is the range's min). */
export function makeScale(range, from, to, log = false) {
  const f = log ? Math.log10 : (v) => v;
  const lo = f(range.min);
  const span = f(range.max) - lo || 1;
  return (value) => from + ((f(value) - lo) / span) * (to - from);
}

/** SVG path text through the [x, y] pixel points ("M1.0,2.0L3.0,4.0"), one decimal place. */
export function pathData(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
}

/** SVG path text that draws each point as a dot (a zero-length segment with a round cap). */
export function dotsData(points) {
  return points.map(([x, y]) => `M${x.toFixed(1)},${y.toFixed(1)}l0,0`).join("");
}

/**
 * Everything the chart draws, in pixels of a `width` x `height` box (y grows downwards):
 * raw and smoothed loss lines (each at most `maxPoints`), validation dots, and the axis ranges.
 * The x axis spans the steps drawn (the progress bar shows how far the run is), so a long run's
 * first steps fill the chart instead of a sliver at its left edge.
 * Smoothed values come from the trainer; rows without one are smoothed here the trainer's way.
 */
export function chartModel({ history = [], validation = [], width = 300, height = 100,
  log = false, maxPoints = MAX_POINTS, padding = 0.06 } = {}) {
  const usable = (v) => finite(v) && (!log || v > 0);
  const raw = history.filter((r) => usable(r[1])).map((r) => [r[0], r[1]]);
  const serverSmoothed = history.every((r) => finite(r[2]) || !finite(r[1]));
  const smoothedValues = serverSmoothed ? history.map((r) => r[2]) : ema(history.map((r) => r[1]));
  const smoothed = history.map((r, i) => [r[0], smoothedValues[i]]).filter((p) => usable(p[1]));
  const val = validation.filter((r) => usable(r[1])).map((r) => [r[0], r[1]]);

  const yRange = valueRange([...raw, ...smoothed, ...val].map((p) => p[1]), { padding, log });
  const steps = [...raw, ...val].map((p) => p[0]);
  const count = raw.length + val.length;
  if (!yRange || steps.length === 0) {
    return { empty: true, count: 0, raw: [], smoothed: [], validation: [], xRange: null, yRange: null };
  }
  const first = Math.min(...steps);
  const xRange = { min: first, max: Math.max(first + 1, ...steps) };
  const sx = makeScale(xRange, 0, width);
  const sy = makeScale(yRange, height, 0, log);
  const toPixels = (points) => points.map(([x, y]) => [sx(x), sy(y)]);
  return {
    empty: false,
    count,
    raw: toPixels(downsample(raw, maxPoints)),
    smoothed: toPixels(downsample(smoothed, maxPoints)),
    validation: toPixels(downsample(val, maxPoints)),
    xRange,
    yRange,
  };
}
