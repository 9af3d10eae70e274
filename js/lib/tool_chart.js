// The LoRA tools' chart as numbers: per layer a bar of the share of its change kept, and for one layer its
// spectrum (leading singular values, log scale) with the cut at the rank kept. Pure, no DOM: the view turns
// `toolChartModel`'s output into SVG. The data is the node's `loralab_chart` ui output
// (trainer/tools/chart_data.py): {rule, layers: [{prefix, rank, input_rank, kept_share, spectrum}]}.

import { makeScale, pathData, valueRange } from "./dashboard_chart.js";

const finite = (value) => typeof value === "number" && Number.isFinite(value);

/** The usable layers of a chart payload (bad entries dropped; a share outside [0, 1] clamped). */
export function chartLayers(payload) {
  const layers = Array.isArray(payload?.layers) ? payload.layers : [];
  return layers.filter((l) => typeof l?.prefix === "string" && finite(l.kept_share) && finite(l.rank)).map((l) => ({
    prefix: l.prefix, rank: l.rank, inputRank: finite(l.input_rank) ? l.input_rank : null,
    keptShare: Math.min(1, Math.max(0, l.kept_share)),
    spectrum: Array.isArray(l.spectrum) ? l.spectrum.filter(finite) : [],
  }));
}

/** The layer shown first: the one that keeps the least of its change (among those with a spectrum). */
export function worstLayer(layers) {
  let worst = -1;
  layers.forEach((l, i) => {
    if (l.spectrum.length && (worst < 0 || l.keptShare < layers[worst].keptShare)) worst = i;
  });
  return worst < 0 ? (layers.length ? 0 : -1) : worst;
}

/** "IN01 attn1 to_q: rank 8 -> 4, keeps 97.3%" style caption of one layer (the kohya prefix shortened). */
export function layerCaption(layer) {
  const name = layer.prefix.replace(/^lora_(unet|te\d?)_/, "");
  const from = layer.inputRank === null ? "" : `${layer.inputRank} -> `;
  return `${name}: rank ${from}${layer.rank}, keeps ${(100 * layer.keptShare).toFixed(1)}%`;
}

/** One line over the chart: how many layers, the mean and the lowest kept share. */
export function chartSummary(layers, rule) {
  if (!layers.length) return "no layer was factorised";
  const mean = layers.reduce((sum, l) => sum + l.keptShare, 0) / layers.length;
  const low = Math.min(...layers.map((l) => l.keptShare));
  return `${rule ? `${rule} · ` : ""}${layers.length} layers · mean kept ${(100 * mean).toFixed(1)}% · lowest ${(100 * low).toFixed(1)}%`;
}

/**
 * Everything the chart draws in a `width` x `height` box per panel (y grows downwards):
 * `bars`, one per layer in file order, as tall as its kept share, and for `selected` (-1: none) its
 * spectrum as `keptPath` (the values kept) and `cutPath` (those discarded), with `cutX` between them.
 */
export function toolChartModel(layers, selected, { width = 300, height = 70, gap = 1 } = {}) {
  const step = layers.length ? width / layers.length : 0;
  const bars = layers.map((l, i) => ({ x: i * step, width: Math.max(0.5, step - (step > 3 * gap ? gap : 0)),
    y: height * (1 - l.keptShare), height: height * l.keptShare, selected: i === selected }));
  const layer = layers[selected];
  const values = (layer?.spectrum ?? []).filter((v) => v > 0);
  const range = valueRange(values, { log: true, padding: 0.05 });
  if (!layer || !range) return { bars, keptPath: "", cutPath: "", cutX: null, values: 0 };
  const sx = makeScale({ min: 0, max: Math.max(1, values.length - 1) }, 0, width);
  const sy = makeScale(range, height, 0, true);
  const points = values.map((v, i) => [sx(i), sy(v)]);
  const kept = Math.min(layer.rank, points.length);
  return {
    bars,
    keptPath: pathData(points.slice(0, kept)),
    cutPath: kept < points.length ? pathData(points.slice(Math.max(0, kept - 1))) : "",
    cutX: kept < points.length ? (sx(kept - 1) + sx(kept)) / 2 : null,
    values: values.length,
  };
}
