// Shows "Load LoRA"'s trigger words in the node after a run, from the `trigger_words` ui output.
// (Stack LoRAs shows its own under the table: js/stack_loras.js.) Users asked for the words to be
// visible without wiring a text node; the STRING output stays for graphs that use them.

import { app } from "../../scripts/app.js";
import { runAfter } from "./lib/node_hooks.js";
import { ensureStyle } from "./lib/style.js";

const NODE_TYPE = "LoraLabLoadLora";

app.registerExtension({
  name: "loralab.TriggerWords",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    runAfter(nodeType.prototype, "onNodeCreated", function () {
      ensureStyle(document);
      const view = document.createElement("div");
      view.className = "loralab-trigger-words";
      view.dataset.testid = "loralab-trigger-words";
      this.addDOMWidget("loralab_trigger_words", "loralab_trigger_words", view, {
        serialize: false, // display only: the words are recomputed on every run
        getMinHeight: () => 30,
        getMaxHeight: () => 80,
      }).serialize = false;
      this.loralabTriggerWords = view;
    });
    runAfter(nodeType.prototype, "onExecuted", function (output) {
      const words = output?.trigger_words;
      if (this.loralabTriggerWords) {
        this.loralabTriggerWords.textContent = Array.isArray(words) ? words.join(", ") : "";
        this.loralabTriggerWords.title = this.loralabTriggerWords.textContent;
      }
    });
  },
});
