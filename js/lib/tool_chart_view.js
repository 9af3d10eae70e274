// The LoRA tools' chart as plain DOM: a summary line, the chosen layer's spectrum with the cut at its rank, a
// bar per layer of the share kept (a click chooses that layer), and the chosen layer's caption.
// Renders a state and reports intents; owns no state (js/tool_chart.js does).

import { el, svg } from "./dom.js";
import { chartSummary, layerCaption, toolChartModel } from "./tool_chart.js";
import { ensureStyle } from "./style.js";

export const CHART_WIDTH = 300; // the SVG's own units; it stretches to the widget's width
const SPECTRUM_HEIGHT = 60;
const BARS_HEIGHT = 40;
const HEIGHT = 16 + SPECTRUM_HEIGHT + 4 + BARS_HEIGHT + 16 + 8; // summary, two charts, caption, gaps

function panel(doc, height, testid) {
  return svg(doc, "svg", { viewBox: `0 0 ${CHART_WIDTH} ${height}`, preserveAspectRatio: "none",
    class: `loralab-chart-${testid}`, "data-testid": `loralab-chart-${testid}`, height: String(height) });
}

/** Builds the element; `intents` receives {select(index)} when a layer's bar is clicked. */
export function createToolChart(doc, intents) {
  ensureStyle(doc);
  const summary = el(doc, "div", { className: "loralab-chart-line", dataset: { testid: "loralab-chart-summary" } });
  const spectrum = panel(doc, SPECTRUM_HEIGHT, "spectrum");
  const kept = svg(doc, "path", { class: "loralab-chart-kept", "data-testid": "loralab-chart-kept" });
  const cut = svg(doc, "path", { class: "loralab-chart-cut", "data-testid": "loralab-chart-cut" });
  const cutLine = svg(doc, "line", { class: "loralab-chart-cutline", y1: "0", y2: String(SPECTRUM_HEIGHT) });
  spectrum.append(kept, cut, cutLine);
  const bars = panel(doc, BARS_HEIGHT, "bars");
  const caption = el(doc, "div", { className: "loralab-chart-line", dataset: { testid: "loralab-chart-caption" } });
  const root = el(doc, "div", { className: "loralab-chart", dataset: { testid: "loralab-chart" } },
    [summary, spectrum, bars, caption]);
  root.hidden = true; // until the node has run

  bars.addEventListener("click", (event) => {
    const index = event.target.dataset?.index;
    if (index !== undefined) intents.select(Number(index));
  });

  return {
    element: root,
    /** Shows `layers` (lib/tool_chart.js chartLayers) with `selected` chosen; nothing before a run. */
    render({ layers, selected, rule }) {
      root.hidden = layers === null;
      if (layers === null) return;
      const model = toolChartModel(layers, selected, { width: CHART_WIDTH, height: BARS_HEIGHT });
      const curve = toolChartModel(layers, selected, { width: CHART_WIDTH, height: SPECTRUM_HEIGHT });
      summary.textContent = chartSummary(layers, rule);
      kept.setAttribute("d", curve.keptPath);
      cut.setAttribute("d", curve.cutPath);
      cutLine.setAttribute("visibility", curve.cutX === null ? "hidden" : "visible");
      if (curve.cutX !== null) for (const x of ["x1", "x2"]) cutLine.setAttribute(x, curve.cutX.toFixed(1));
      bars.replaceChildren(...model.bars.map((b, i) => {
        const rect = svg(doc, "rect", { x: b.x.toFixed(2), y: b.y.toFixed(2), width: b.width.toFixed(2),
          height: Math.max(0.5, b.height).toFixed(2), "data-index": String(i),
          class: `loralab-chart-bar${b.selected ? " loralab-chart-bar-selected" : ""}` });
        const title = svg(doc, "title"); // the hover text: layer, ranks, share kept
        title.textContent = layerCaption(layers[i]);
        rect.append(title);
        return rect;
      }));
      caption.textContent = layers[selected] ? `${layerCaption(layers[selected])} · ${curve.values} singular values`
        : "";
    },
    /** The height the node must give the chart (none before a run). */
    minHeight() {
      return root.hidden ? 0 : HEIGHT;
    },
  };
}
