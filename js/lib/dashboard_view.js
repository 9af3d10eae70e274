// The training dashboard as plain DOM: renders a view-model, the loss chart's model and the timestep
// histogram's model, reports user intents.
//
// Owns no job state and knows no host: js/train_dashboard.js feeds it. The charts are inline SVGs
// inside the DOM widget (the editor's newer node renderer drops canvas-drawn widgets). Every part
// carries a data-testid and a `loralab-dash-*` class for browser tests and users' own styles.

import { dotsData, pathData } from "./dashboard_chart.js";
import { formatLoss } from "./dashboard_format.js";
import { el, svg } from "./dom.js";
import { ensureDashboardStyle } from "./dashboard_style.js";

export const CHART_WIDTH = 300; // the SVG's own units; it stretches to the widget's width
export const CHART_HEIGHT = 100;
export const HISTOGRAM_WIDTH = 300; // the timestep histogram's SVG units, stretched the same way
export const HISTOGRAM_HEIGHT = 40;

// Heights (px) of the parts, for the widget's minimum height; they match dashboard_style.js.
const GAP = 4;
const HEIGHTS = { head: 18, bar: 10, stats: 3 * 17, chart: 110, histogram: 70, samples: 70, checkpoint: 16, maxCheckpoints: 3,
  message: 34, buttons: 26 };

function stat(doc, testid, label) {
  const value = el(doc, "b", { dataset: { testid: `loralab-dash-${testid}` } });
  return { cell: el(doc, "div", {}, [el(doc, "span", { textContent: `${label} ` }), value]), value };
}

/** Shows `src` large over the page until a click or Escape; returns a function that closes it. */
export function showOverlay(doc, src, caption) {
  const close = () => {
    overlay.remove();
    doc.removeEventListener("keydown", onKey, true);
  };
  const onKey = (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  };
  const overlay = el(doc, "div", { className: "loralab-dash-overlay", dataset: { testid: "loralab-dash-overlay" } },
    [el(doc, "img", { src, alt: caption }), el(doc, "div", { textContent: caption })]);
  overlay.addEventListener("click", close);
  doc.addEventListener("keydown", onKey, true);
  doc.body.append(overlay);
  return close;
}

/**
 * The timestep histogram: a caption naming the distribution, the draws so far, one <rect> per bin with draws
 * (its counts and timesteps in data-* attributes, its tooltip in a <title>) and axis labels in timesteps.
 */
function createHistogram(doc) {
  const bars = svg(doc, "svg", { viewBox: `0 0 ${HISTOGRAM_WIDTH} ${HISTOGRAM_HEIGHT}`, preserveAspectRatio: "none" });
  const caption = el(doc, "span", { className: "loralab-dash-hist-caption", dataset: { testid: "loralab-dash-timesteps-caption" } });
  const total = el(doc, "span", { className: "loralab-dash-hist-total" });
  const axis = el(doc, "div", { className: "loralab-dash-hist-axis" });
  const empty = el(doc, "div", { className: "loralab-dash-empty", textContent: "the timesteps drawn appear here after the first step" });
  const element = el(doc, "div", { className: "loralab-dash-hist", dataset: { testid: "loralab-dash-timesteps", total: "0" },
    title: "how often each range of training timesteps was drawn (0 = least noise)" },
  [el(doc, "div", { className: "loralab-dash-hist-head" }, [caption, total]), bars, axis, empty]);
  let shownKey = "";

  function render(model) {
    const key = JSON.stringify([model.bars, model.ticks, model.caption]);
    if (key === shownKey) return;
    shownKey = key;
    element.dataset.total = String(model.total);
    element.dataset.range = model.range ? model.range.join(",") : "";
    element.dataset.sampling = model.sampling;
    caption.textContent = model.caption;
    total.textContent = model.empty ? "" : `${model.total} ${model.total === 1 ? "draw" : "draws"}`;
    empty.hidden = !model.empty;
    bars.replaceChildren(...model.bars.map((bar) => {
      const rect = svg(doc, "rect", { x: bar.x.toFixed(2), y: bar.y.toFixed(2), width: bar.width.toFixed(2),
        height: bar.height.toFixed(2), "data-testid": "loralab-dash-timestep-bar", "data-bin": String(bar.index),
        "data-count": String(bar.count), "data-lo": String(bar.lo), "data-hi": String(bar.hi) });
      const title = svg(doc, "title");
      title.textContent = bar.label;
      rect.append(title);
      return rect;
    }));
    axis.replaceChildren(...model.ticks.map((tick) => el(doc, "span", { textContent: tick.label,
      style: `left: ${(tick.at * 100).toFixed(2)}%; transform: translateX(-${(tick.at * 100).toFixed(2)}%)` })));
  }

  return { element, render };
}

/**
 * Builds the dashboard element. `intents` receives stop(), save(), sample() (the owner posts them
 * and calls render() with what the job says next) and log() (the owner flips the chart's scale).
 */
export function createDashboard(doc, intents) {
  ensureDashboardStyle(doc);
  const state = el(doc, "span", { className: "loralab-dash-state", dataset: { testid: "loralab-dash-state" } });
  const jobLabel = el(doc, "span", { className: "loralab-dash-muted", dataset: { testid: "loralab-dash-job" } });
  const fill = el(doc, "div");
  const bar = el(doc, "div", { className: "loralab-dash-bar", role: "progressbar", dataset: { testid: "loralab-dash-progress" } }, [fill]);
  const stats = {
    step: stat(doc, "step", "step"), rate: stat(doc, "rate", "speed"), eta: stat(doc, "eta", "ETA"),
    loss: stat(doc, "loss", "loss"), smoothed: stat(doc, "smoothed", "smoothed"), validation: stat(doc, "validation", "val"),
    lr: stat(doc, "lr", "lr"), memory: stat(doc, "memory", "memory"), checkpoints: stat(doc, "checkpoint-count", "saved"),
  };
  const statGrid = el(doc, "div", { className: "loralab-dash-stats" }, Object.values(stats).map((s) => s.cell));

  const rawPath = svg(doc, "path", { class: "loralab-dash-raw", "data-testid": "loralab-dash-raw" });
  const smoothPath = svg(doc, "path", { class: "loralab-dash-smooth", "data-testid": "loralab-dash-smooth" });
  const valPath = svg(doc, "path", { class: "loralab-dash-val", "data-testid": "loralab-dash-validation" });
  const chartSvg = svg(doc, "svg", { viewBox: `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`, preserveAspectRatio: "none" });
  chartSvg.append(rawPath, smoothPath, valPath);
  const yMax = el(doc, "span", { className: "loralab-dash-axis", style: "top: 2px; left: 4px" });
  const yMin = el(doc, "span", { className: "loralab-dash-axis", style: "bottom: 2px; left: 4px" });
  const xMax = el(doc, "span", { className: "loralab-dash-axis", style: "bottom: 2px; right: 4px" });
  const empty = el(doc, "div", { className: "loralab-dash-empty", textContent: "the loss appears here while training" });
  const logButton = el(doc, "button", { type: "button", className: "loralab-dash-logbtn", textContent: "log",
    title: "Log scale for the loss axis", dataset: { testid: "loralab-dash-log", action: "log" } });
  const chart = el(doc, "div", { className: "loralab-dash-chart", dataset: { testid: "loralab-dash-chart", points: "0" },
    title: "loss per step: faint = raw, bold = smoothed, dots = validation" }, [chartSvg, yMax, yMin, xMax, empty, logButton]);

  const histogram = createHistogram(doc);

  const samples = el(doc, "div", { className: "loralab-dash-samples", dataset: { testid: "loralab-dash-samples" } });
  const checkpoints = el(doc, "ul", { className: "loralab-dash-ckpts", dataset: { testid: "loralab-dash-checkpoints" } });
  const message = el(doc, "div", { className: "loralab-dash-message", dataset: { testid: "loralab-dash-message" } });
  const buttons = {
    stop: el(doc, "button", { type: "button", textContent: "Stop & save", title: "Stop at the next step and save the LoRA so far",
      dataset: { testid: "loralab-dash-stop", action: "stop" } }),
    save: el(doc, "button", { type: "button", textContent: "Save now", title: "Save a checkpoint at the next step and keep training",
      dataset: { testid: "loralab-dash-save", action: "save" } }),
    sample: el(doc, "button", { type: "button", textContent: "Sample now", title: "Render sample images at the next step",
      dataset: { testid: "loralab-dash-sample", action: "sample" } }),
  };
  const root = el(doc, "div", { className: "loralab-dash", dataset: { testid: "loralab-dash", state: "none" } }, [
    el(doc, "div", { className: "loralab-dash-head" }, [state, jobLabel]), bar, statGrid, chart, histogram.element, samples,
    checkpoints,
    message, el(doc, "div", { className: "loralab-dash-buttons" }, Object.values(buttons))]);

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button && !button.disabled) intents[button.dataset.action]?.();
    const img = event.target.closest("img[data-src]");
    if (img) showOverlay(doc, img.dataset.src, img.title);
  });

  let shown = { samplesKey: "", checkpointsKey: "", sampleRows: 0, checkpointRows: 0, message: false };

  function renderSamples(groups) {
    const key = JSON.stringify(groups);
    if (key === shown.samplesKey) return;
    shown.samplesKey = key;
    samples.replaceChildren(...groups.map((g) => el(doc, "figure", {}, [
      el(doc, "div", { className: "loralab-dash-thumbs" }, g.items.map((s) => el(doc, "img", {
        src: s.src, alt: s.label, title: s.label.includes(`step ${g.step}`) ? s.label : `${s.label} (step ${g.step})`,
        dataset: { testid: "loralab-dash-sample-image", src: s.src, step: String(g.step) } }))),
      el(doc, "figcaption", { textContent: `step ${g.step}` })])));
    samples.hidden = groups.length === 0;
  }

  function renderCheckpoints(list) {
    const key = JSON.stringify(list);
    if (key === shown.checkpointsKey) return;
    shown.checkpointsKey = key;
    checkpoints.replaceChildren(...[...list].reverse().map((c) => el(doc, "li", {
      textContent: `step ${c.step}: ${c.loraName}`, title: c.loraName,
      dataset: { testid: "loralab-dash-checkpoint", step: String(c.step), lora: c.loraName } })));
    checkpoints.hidden = list.length === 0;
  }

  function renderChart(model, log) {
    chart.dataset.points = String(model.count);
    empty.hidden = !model.empty;
    rawPath.setAttribute("d", pathData(model.raw));
    smoothPath.setAttribute("d", pathData(model.smoothed));
    valPath.setAttribute("d", dotsData(model.validation));
    yMax.textContent = model.yRange ? formatLoss(model.yRange.max) + (log ? " (log)" : "") : "";
    yMin.textContent = model.yRange ? formatLoss(model.yRange.min) : "";
    xMax.textContent = model.xRange ? `step ${Math.round(model.xRange.max)}` : "";
  }

  return {
    element: root,
    /**
     * Redraws from a view-model (dashboard_model.viewModel), a chart model (dashboard_chart.chartModel), a
     * histogram model (timestep_histogram.histogramModel) and an optional note.
     */
    render(vm, chartModel, histogramModel, { note = "", log = false } = {}) {
      root.dataset.state = vm.state;
      root.dataset.jobId = vm.jobId;
      state.textContent = vm.stateLabel;
      jobLabel.textContent = vm.hasJob
        ? [`job ${vm.jobId.slice(0, 8)}`, vm.batch, vm.memoryChoice].filter(Boolean).join(" · ") : "";
      stats.memory.value.title = vm.memoryPlan;
      fill.style.width = `${(vm.progress * 100).toFixed(1)}%`;
      bar.setAttribute("aria-valuenow", String(Math.round(vm.progress * 100)));
      for (const key of ["step", "rate", "eta", "loss", "smoothed", "validation", "lr", "memory"]) {
        stats[key].value.textContent = vm[key === "step" ? "stepText" : key];
      }
      stats.checkpoints.value.textContent = String(vm.checkpoints.length);
      renderChart(chartModel, log);
      histogram.render(histogramModel);
      logButton.setAttribute("aria-pressed", String(log));
      renderSamples(vm.samples);
      renderCheckpoints(vm.checkpoints);
      const text = note || vm.error || vm.pending || vm.result;
      message.textContent = text;
      message.hidden = !text;
      message.classList.toggle("loralab-dash-bad", Boolean(note || (vm.error && vm.state === "error")));
      for (const button of Object.values(buttons)) button.disabled = !vm.canControl;
      shown = { ...shown, sampleRows: vm.samples.length ? 1 : 0,
        checkpointRows: Math.min(vm.checkpoints.length, HEIGHTS.maxCheckpoints), message: Boolean(text) };
    },
    /** The height that shows every part without clipping. */
    minHeight() {
      const parts = [HEIGHTS.head, HEIGHTS.bar, HEIGHTS.stats, HEIGHTS.chart, HEIGHTS.histogram, HEIGHTS.buttons];
      if (shown.sampleRows) parts.push(HEIGHTS.samples);
      if (shown.checkpointRows) parts.push(shown.checkpointRows * HEIGHTS.checkpoint);
      if (shown.message) parts.push(HEIGHTS.message);
      return parts.reduce((a, b) => a + b, 0) + GAP * (parts.length - 1) + 4;
    },
  };
}
