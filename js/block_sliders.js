// Graph-editor wiring for "Load LoRA"'s per-block sliders: under the node's inputs, a toggle that shows one
// slider per block of the chosen file (GET /loralab/loras/blocks), each set to the weight the node's
// `block_weights` text gives that block. Moving a slider rewrites that text, the single source of truth: it
// is what the workflow saves and the prompt sends, so headless users and old workflows work without this file.

import { app } from "../../scripts/app.js";
import { setWeight, sliderRows, slidersStatus, weightsText } from "./lib/block_sliders.js";
import { createBlockSliders } from "./lib/block_sliders_view.js";
import { runAfter } from "./lib/node_hooks.js";
import { loraBlocks } from "./lora_library.js";

const NODE_TYPE = "LoraLabLoadLora";
const NAME_WIDGET = "lora_name";
const TEXT_WIDGET = "block_weights";
const SLIDERS_WIDGET = "loralab_block_sliders";
const INFO_WIDGET = "loralab_lora_info";
const MARGIN = 5; // the host's DOM widgets take this off each side (its default of 10 would cut the toggle)

function attachSliders(node) {
  const nameWidget = node.widgets?.find((w) => w.name === NAME_WIDGET);
  const textWidget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!nameWidget || !textWidget || node.loralabBlockSliders) return;
  const state = { open: false, rows: [], answer: null, error: null };
  let asked = null; // the name and text of the latest request; an older answer is dropped

  const view = createBlockSliders(document, {
    toggle() {
      state.open = !state.open;
      asked = null; // opening again asks again (a file changed on disk, a failed request)
      draw(true);
      refresh();
    },
    weight(block, value) {
      state.rows = setWeight(state.rows, block, value);
      const text = weightsText(state.rows);
      app.canvas?.emitBeforeChange?.(); // one step of the editor's undo history
      textWidget.value = text;
      asked = `${nameWidget.value}\n${text}`; // the sliders already show it: nothing to ask
      app.canvas?.emitAfterChange?.();
      draw();
    },
  });
  const widget = node.addDOMWidget(SLIDERS_WIDGET, SLIDERS_WIDGET, view.element, {
    serialize: false, // the weights travel in block_weights
    margin: MARGIN,
    getMinHeight: () => view.minHeight() + 2 * MARGIN,
    getMaxHeight: () => view.minHeight() + 2 * MARGIN,
  });
  widget.serialize = false;
  // After every saved widget, so the saved values keep their places, and under the file's info line
  // (js/lora_metadata.js) whichever extension loaded first: that line goes right after the saved widgets.
  node.widgets.splice(node.widgets.indexOf(widget), 1);
  const after = Math.max(node.widgets.findLastIndex((w) => w.serialize !== false),
    node.widgets.findIndex((w) => w.name === INFO_WIDGET));
  node.widgets.splice(after + 1, 0, widget);

  /** exact: the node's height snaps to its content (on toggle); else it only grows. */
  function draw(exact = false) {
    view.render({ open: state.open, rows: state.rows,
      statusText: slidersStatus({ name: nameWidget.value, answer: state.answer, error: state.error }) });
    view.element.dataset.nodeId = String(node.id);
    const min = node.computeSize();
    node.setSize([Math.max(node.size[0], min[0]), exact ? min[1] : Math.max(node.size[1], min[1])]);
    node.setDirtyCanvas?.(true, true); // the host lays the widgets out again when it next draws the node
  }

  /** Asks the host for the file's blocks under the current text (only while the sliders are shown). */
  async function refresh() {
    const name = nameWidget.value;
    const text = textWidget.value ?? "";
    const key = `${name}\n${text}`;
    if (!state.open || !name || key === asked) {
      draw();
      return;
    }
    asked = key;
    state.answer = null;
    state.error = null;
    draw();
    const { answer, error } = await loraBlocks(name, text);
    if (asked !== key) return;
    state.answer = answer;
    state.error = error;
    state.rows = sliderRows(answer);
    draw();
  }

  // Another file chosen, or the text typed: the sliders follow.
  for (const w of [nameWidget, textWidget]) runAfter(w, "callback", () => refresh());
  // The node id is -1 until the graph adds the node; tests and styles find the sliders by it.
  runAfter(node, "onAdded", function () {
    view.element.dataset.nodeId = String(this.id);
  });
  node.loralabBlockSliders = { refresh };
  draw();
}

app.registerExtension({
  name: "loralab.BlockSliders",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    runAfter(nodeType.prototype, "onNodeCreated", function () {
      attachSliders(this);
    });
    // Workflow load, undo, paste set the values without the callbacks.
    runAfter(nodeType.prototype, "onConfigure", function () {
      this.loralabBlockSliders?.refresh();
    });
  },

  loadedGraphNode(node) {
    if (node.type === NODE_TYPE) node.loralabBlockSliders?.refresh();
  },
});
