// Graph-editor wiring for the LoRA tools' chart (Resize LoRA, and Merge / Extract LoRA alike): after a run the
// node shows the spectrum of one layer with the cut at its new rank, and a bar per layer of the share of its
// change kept; a click on a bar shows that layer's spectrum. The data is the node's `loralab_chart` ui
// output (trainer/tools/chart_data.py); nothing is saved with the workflow (a run shows it again).

import { app } from "../../scripts/app.js";
import { runAfter } from "./lib/node_hooks.js";
import { chartLayers, worstLayer } from "./lib/tool_chart.js";
import { createToolChart } from "./lib/tool_chart_view.js";

const NODE_TYPES = new Set(["LoraLabResizeLora", "LoraLabMergeLoras", "LoraLabExtractLora"]);
const CHART_WIDGET = "loralab_tool_chart";
const MARGIN = 5;

function attachChart(node) {
  if (node.loralabToolChart) return;
  const state = { layers: null, selected: -1, rule: "" };
  const view = createToolChart(document, {
    select(index) {
      state.selected = index;
      view.render(state);
    },
  });
  node.addDOMWidget(CHART_WIDGET, CHART_WIDGET, view.element, {
    serialize: false, // shown from the last run's output only
    margin: MARGIN,
    getMinHeight: () => view.minHeight() + (view.minHeight() ? 2 * MARGIN : 0),
    getMaxHeight: () => view.minHeight() + (view.minHeight() ? 2 * MARGIN : 0),
  }).serialize = false;

  node.loralabToolChart = {
    show(payload) {
      state.layers = chartLayers(payload);
      state.selected = worstLayer(state.layers);
      state.rule = typeof payload?.rule === "string" ? payload.rule : "";
      view.render(state);
      view.element.dataset.nodeId = String(node.id);
      const min = node.computeSize();
      node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
      node.setDirtyCanvas?.(true, true);
    },
  };
}

app.registerExtension({
  name: "loralab.ToolChart",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;

    runAfter(nodeType.prototype, "onNodeCreated", function () {
      attachChart(this);
    });
    runAfter(nodeType.prototype, "onExecuted", function (output) {
      const chart = output?.loralab_chart?.[0];
      if (chart) this.loralabToolChart?.show(chart);
    });
  },
});
