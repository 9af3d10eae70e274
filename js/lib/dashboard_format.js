// Text for the training dashboard's numbers: durations, ETA, bytes, losses, rates. Pure, no DOM.
//
// Every formatter takes what a job snapshot may hold (a number, or null when the trainer has not
// measured it yet or the value was NaN) and returns display text; missing values show as a dash.

export const MISSING = "–";

const finite = (value) => typeof value === "number" && Number.isFinite(value);

/** Whole seconds as "1h 02m 03s", "4m 05s" or "9s"; days roll into hours ("27h 00m 00s"). */
export function formatDuration(seconds) {
  if (!finite(seconds) || seconds < 0) return MISSING;
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (h > 0) return `${h}h ${pad(m)}m ${pad(s)}s`;
  if (m > 0) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

/** The time left; under a second of work left reads "<1s" rather than "0s" while still running. */
export function formatEta(seconds) {
  if (!finite(seconds) || seconds < 0) return MISSING;
  return seconds > 0 && seconds < 0.5 ? "<1s" : formatDuration(seconds);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** Binary units with three significant digits: 1536 -> "1.50 KiB", 3 * 2**30 -> "3.00 GiB". */
export function formatBytes(bytes) {
  if (!finite(bytes) || bytes < 0) return MISSING;
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  return `${value >= 100 ? Math.round(value) : value.toPrecision(3)} ${UNITS[unit]}`;
}

/** A loss with four significant digits ("0.08123"); tiny or huge values in exponent form. */
export function formatLoss(loss) {
  if (!finite(loss)) return MISSING;
  const size = Math.abs(loss);
  if (size !== 0 && (size < 1e-4 || size >= 1e5)) return loss.toExponential(2);
  return String(Number(loss.toPrecision(4)));
}

/** A learning rate as people write it: 1e-4 -> "1.00e-4", 0.0003 -> "3.00e-4". */
export function formatLr(lr) {
  if (!finite(lr)) return MISSING;
  if (lr === 0) return "0";
  return lr.toExponential(2).replace("e+", "e");
}

/** Steps per second; below one step a second, seconds per step reads better ("4.2 s/it"). */
export function formatRate(stepsPerSecond) {
  if (!finite(stepsPerSecond) || stepsPerSecond <= 0) return MISSING;
  if (stepsPerSecond < 1) return `${(1 / stepsPerSecond).toPrecision(2)} s/it`;
  return `${stepsPerSecond.toPrecision(3)} it/s`;
}

/**
 * The effective batch of a run over several processes (torchrun), as the trainer logs it:
 * "batch 2 x 4 accumulation x 2 processes = 16"; "" for a run in one process (nothing to explain).
 */
export function formatBatch(batch) {
  if (!batch || !(batch.world_size > 1)) return "";
  return `batch ${batch.batch_size} x ${batch.grad_accumulation} accumulation x ${batch.world_size} processes`
    + ` = ${batch.effective}`;
}
