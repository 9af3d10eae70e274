// The dashboard's histogram of the training timesteps drawn, as numbers: bins -> bar geometry, axis labels
// in timesteps, the empty state and the distribution's name. Pure, no DOM: the view turns `histogramModel`'s
// output into <rect> elements.
//
// The job snapshot carries `timestep_histogram`: {range: [lo, hi], counts: [...], sampling} (trainer/jobs.py),
// where counts[i] holds the draws t with floor((t - lo) * bins / (hi - lo)) === i, and sampling names the
// run's timestep_sampling setting; the whole value is null before the first step.

export const BAR_GAP = 0.15; // share of a bin's width left empty between bars
export const MIN_BAR_HEIGHT = 1; // a bin with draws is never drawn flat, however many the tallest has

const isCount = (value) => Number.isInteger(value) && value >= 0;

/** Whether `histogram` has the snapshot's shape: an integer range lo < hi and counts of draws. */
export function isHistogram(histogram) {
  const range = histogram?.range;
  return Array.isArray(range) && range.length === 2 && Number.isInteger(range[0]) && Number.isInteger(range[1])
    && range[0] < range[1] && Array.isArray(histogram.counts) && histogram.counts.length > 0
    && histogram.counts.every(isCount);
}

/**
 * The timesteps of bin `index` of `bins` over [lo, hi): {lo, hi}, hi exclusive; the trainer's binning,
 * floor((t - lo) * bins / (hi - lo)) === index, holds exactly for lo <= t < hi.
 */
export function binEdges(index, bins, [lo, hi]) {
  const span = hi - lo;
  return { lo: lo + Math.ceil((index * span) / bins), hi: lo + Math.ceil(((index + 1) * span) / bins) };
}

/** What a bar's tooltip says: "t 300–349: 5 draws" (the last timestep of the bin inclusive). */
export function binLabel(edges, count) {
  const span = edges.hi - 1 > edges.lo ? `${edges.lo}–${edges.hi - 1}` : `${edges.lo}`;
  return `t ${span}: ${count} ${count === 1 ? "draw" : "draws"}`;
}

/**
 * Everything the histogram draws, in pixels of a `width` x `height` box (y grows downwards): one bar per bin
 * with draws (bins without draws have no bar), heights proportional to the tallest bin; axis ticks at the
 * range's ends and middle, labelled in timesteps; a caption naming the distribution when the snapshot does.
 * `empty` is true before the first draw.
 */
export function histogramModel(histogram, { width = 300, height = 40 } = {}) {
  const sampling = typeof histogram?.sampling === "string" && histogram.sampling ? histogram.sampling : "";
  const caption = sampling ? `timesteps drawn · ${sampling}` : "timesteps drawn";
  if (!isHistogram(histogram)) {
    return { empty: true, total: 0, maxCount: 0, range: null, sampling, caption, bars: [], ticks: [] };
  }
  const { range, counts } = histogram;
  const total = counts.reduce((sum, c) => sum + c, 0);
  const maxCount = Math.max(...counts);
  const binWidth = width / counts.length;
  const bars = [];
  counts.forEach((count, index) => {
    if (count === 0) return;
    const edges = binEdges(index, counts.length, range);
    const barHeight = Math.max(MIN_BAR_HEIGHT, (count / maxCount) * height);
    bars.push({ index, count, lo: edges.lo, hi: edges.hi, label: binLabel(edges, count),
      x: (index + BAR_GAP / 2) * binWidth, width: binWidth * (1 - BAR_GAP), y: height - barHeight, height: barHeight });
  });
  const middle = Math.round((range[0] + range[1]) / 2);
  const ticks = [{ at: 0, label: String(range[0]) }, { at: (middle - range[0]) / (range[1] - range[0]), label: String(middle) },
    { at: 1, label: String(range[1]) }];
  return { empty: total === 0, total, maxCount, range: [range[0], range[1]], sampling, caption, bars, ticks };
}
