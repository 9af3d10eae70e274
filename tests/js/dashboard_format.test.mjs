// The dashboard's number formatting (js/lib/dashboard_format.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  formatBatch, formatBytes, formatDuration, formatEta, formatLoss, formatLr, formatRate, MISSING,
} from "../../js/lib/dashboard_format.js";

const NOT_NUMBERS = [null, undefined, NaN, Infinity, -Infinity, "12", {}];

test("durations read as h/m/s with zero-padded minutes and seconds", () => {
  assert.equal(formatDuration(0), "0s");
  assert.equal(formatDuration(9.4), "9s");
  assert.equal(formatDuration(59.6), "1m 00s"); // rounding carries into the minutes
  assert.equal(formatDuration(65), "1m 05s");
  assert.equal(formatDuration(3600), "1h 00m 00s");
  assert.equal(formatDuration(3723), "1h 02m 03s");
  assert.equal(formatDuration(27 * 3600), "27h 00m 00s");
});

test("ETA: under half a second left is '<1s', done is '0s'", () => {
  assert.equal(formatEta(0.2), "<1s");
  assert.equal(formatEta(0), "0s");
  assert.equal(formatEta(125), "2m 05s");
});

test("bytes in binary units with three significant digits", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1536), "1.50 KiB");
  assert.equal(formatBytes(3 * 2 ** 30), "3.00 GiB");
  assert.equal(formatBytes(150.4 * 2 ** 20), "150 MiB");
  assert.equal(formatBytes(2 ** 50), "1024 TiB"); // no unit past TiB
});

test("losses keep four significant digits; extremes use exponents", () => {
  assert.equal(formatLoss(0.0812345), "0.08123");
  assert.equal(formatLoss(1.5), "1.5");
  assert.equal(formatLoss(0), "0");
  assert.equal(formatLoss(0.00001234), "1.23e-5");
  assert.equal(formatLoss(123456), "1.23e+5");
});

test("learning rates in exponent form", () => {
  assert.equal(formatLr(1e-4), "1.00e-4");
  assert.equal(formatLr(0.0003), "3.00e-4");
  assert.equal(formatLr(0.001), "1.00e-3");
  assert.equal(formatLr(0), "0");
});

test("rates: it/s from one step a second up, s/it below", () => {
  assert.equal(formatRate(3.456), "3.46 it/s");
  assert.equal(formatRate(1), "1.00 it/s");
  assert.equal(formatRate(0.25), "4.0 s/it");
  assert.equal(formatRate(0), MISSING);
});

test("every formatter shows a dash for what is not a finite number, and for negatives where meaningless", () => {
  for (const f of [formatDuration, formatEta, formatBytes, formatLoss, formatLr, formatRate]) {
    for (const value of NOT_NUMBERS) assert.equal(f(value), MISSING, `${f.name}(${String(value)})`);
  }
  for (const f of [formatDuration, formatEta, formatBytes, formatRate]) assert.equal(f(-1), MISSING, f.name);
});

test("the effective batch shows for a run over several processes, not for one", () => {
  const batch = { batch_size: 2, grad_accumulation: 4, world_size: 2, effective: 16 };
  assert.equal(formatBatch(batch), "batch 2 x 4 accumulation x 2 processes = 16");
  assert.equal(formatBatch({ ...batch, world_size: 1, effective: 8 }), "");
  assert.equal(formatBatch(null), ""); // a job from before the batch was recorded
  assert.equal(formatBatch(undefined), "");
});
