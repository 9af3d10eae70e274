// Graph-editor wiring for "Load LoRA": under the file choice, one line with the chosen file's rank, alpha,
// base model and trigger words, read from the file (by the host, GET /loralab/loras/info) as soon as it is
// chosen, without a run.
// (Stack LoRAs shows the same line under each row: js/stack_loras.js. The words Load LoRA output after
// a run stay in js/trigger_words.js.)

import { app } from "../../scripts/app.js";
import { loraInfo } from "./lora_library.js";
import { loraInfoElement, showLoraInfo } from "./lib/lora_info_view.js";
import { LOADING_INFO } from "./lib/lora_metadata.js";
import { runAfter } from "./lib/node_hooks.js";
import { ensureStyle } from "./lib/style.js";

const NODE_TYPE = "LoraLabLoadLora";
const NAME_WIDGET = "lora_name";
const INFO_WIDGET = "loralab_lora_info";
const INFO_MARGIN = 5; // the host's DOM widgets take this off each side (its default of 10 dwarfs one line)
const INFO_HEIGHT = 18 + 2 * INFO_MARGIN;

function attachInfo(node) {
  const nameWidget = node.widgets?.find((w) => w.name === NAME_WIDGET);
  if (!nameWidget || node.loralabLoraInfo) return;
  ensureStyle(document);
  const view = loraInfoElement(document, null);
  const widget = node.addDOMWidget(INFO_WIDGET, INFO_WIDGET, view, {
    serialize: false, // display only: it is read again from the file
    margin: INFO_MARGIN,
    getMinHeight: () => INFO_HEIGHT,
    getMaxHeight: () => INFO_HEIGHT,
  });
  widget.serialize = false;
  // Right under the node's own inputs, above the trigger-words box, whichever extension loaded first.
  // After every saved widget, so the saved values keep their places.
  node.widgets.splice(node.widgets.indexOf(widget), 1);
  node.widgets.splice(node.widgets.findLastIndex((w) => w.serialize !== false) + 1, 0, widget);

  /** Shows the chosen file's info: at once if it was read before, else after its one request. */
  function update() {
    const name = nameWidget.value;
    const known = loraInfo.peek(name);
    showLoraInfo(view, known === undefined ? LOADING_INFO : known);
    if (known !== undefined) return;
    loraInfo.get(name).then((info) => {
      if (nameWidget.value === name) showLoraInfo(view, info); // a later choice shows its own answer
    });
  }

  /** Grows the node to show the line (a workflow saved before this line existed has a smaller size). */
  function fit() {
    const min = node.computeSize();
    if (node.size[1] < min[1]) node.setSize([node.size[0], min[1]]);
  }

  // A choice in the combo (canvas or Vue node renderer) and an API-format import call the callback.
  const callback = nameWidget.callback;
  nameWidget.callback = function (...args) {
    const result = callback?.apply(this, args);
    loraInfo.retry(nameWidget.value); // choosing a file again asks again if it was missing or the host failed
    update();
    return result;
  };

  node.loralabLoraInfo = {
    /** For paths that set the value without the callback: workflow load, undo, paste. */
    refresh() {
      update();
      fit();
    },
  };
  // After the current task: a node being loaded gets its saved value first (the graph configures it in the
  // same task), so the default file is not read in vain.
  queueMicrotask(() => node.loralabLoraInfo.refresh());
}

app.registerExtension({
  name: "loralab.LoraMetadata",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    runAfter(nodeType.prototype, "onNodeCreated", function () {
      attachInfo(this);
    });
    runAfter(nodeType.prototype, "onConfigure", function () {
      this.loralabLoraInfo?.refresh();
    });
  },

  loadedGraphNode(node) {
    if (node.type === NODE_TYPE) node.loralabLoraInfo?.refresh();
  },
});
