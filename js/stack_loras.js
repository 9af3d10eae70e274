// Graph-editor wiring for "Stack LoRAs": a DOM table in place of the node's raw `loras` JSON text.
//
// The hidden `loras` widget stays the single source of truth: it is what the workflow saves and what
// the API prompt sends, so headless users and old workflows keep working without this file. The table
// is a view of that text: every edit rewrites it, and every load rebuilds the table from it.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import * as stack from "./lib/stack_rows.js";
import { createStackTable } from "./lib/stack_table.js";

const NODE_TYPE = "LoraLabStackLoras";
const ROWS_WIDGET = "loras";
const EDITOR_WIDGET = "loralab_stack_editor";
const MIN_WIDTH = 420;

let loraNamesRequest = null;

/** The host's LoRA file names; one request shared by all nodes until `refresh` asks for a new one. */
function loraNames(refresh = false) {
  if (!loraNamesRequest || refresh) {
    loraNamesRequest = api.fetchApi("/models/loras")
      .then((resp) => (resp.ok ? resp.json() : Promise.reject(new Error(`GET /models/loras answered ${resp.status}`))))
      .then((list) => (Array.isArray(list) ? list.filter((n) => typeof n === "string") : []))
      .catch((e) => {
        loraNamesRequest = null; // retry on the next call instead of caching the failure
        console.warn("[LoRA Lab] could not list LoRA files:", e);
        return [];
      });
  }
  return loraNamesRequest;
}

/** Takes a widget out of sight and out of the layout while it still saves and serialises. */
function hideWidget(widget) {
  widget.hidden = true; // canvas renderer and DOM widget visibility
  widget.options = { ...widget.options, hidden: true }; // Vue node renderer
  widget.computeSize = () => [0, -4]; // zero height in the node's widget layout
}

function attachEditor(node) {
  const rowsWidget = node.widgets?.find((w) => w.name === ROWS_WIDGET);
  if (!rowsWidget || node.loralabStack) return;
  hideWidget(rowsWidget);

  const state = { rows: [], names: [], error: null, triggerWords: "" };
  let shownText = null; // the rows text the table currently shows

  const commit = (rows) => {
    const resized = rows.length !== state.rows.length;
    // before/after-change brackets make each edit one step of the editor's undo history.
    app.canvas?.emitBeforeChange?.();
    state.rows = rows;
    state.error = null;
    shownText = stack.serializeRows(rows);
    rowsWidget.value = shownText;
    redraw(resized ? "exact" : null);
    app.canvas?.emitAfterChange?.();
  };
  const table = createStackTable(document, {
    add: async () => {
      state.names = await loraNames(true); // a file saved since the node was drawn becomes the default
      commit(stack.addRow(state.rows, state.names)); // rows read after the wait: no edit in between is lost
    },
    remove: (i) => commit(stack.removeRow(state.rows, i)),
    move: (i, delta) => commit(stack.moveRow(state.rows, i, delta)),
    toggle: (i, on) => commit(stack.toggleRow(state.rows, i, on)),
    name: (i, name) => commit(stack.setName(state.rows, i, name)),
    strength: (i, which, text) => commit(stack.setStrength(state.rows, i, which, text)),
  });
  node.addDOMWidget(EDITOR_WIDGET, "loralab_stack", table.element, {
    serialize: false, // the rows already travel in `loras`
    getMinHeight: () => table.minHeight(),
    getValue: () => rowsWidget.value,
    setValue: () => {},
  }).serialize = false;

  /** fit: "exact" snaps the height to the rows (after add/remove), "grow" only enlarges (on load). */
  function redraw(fit) {
    table.render(state);
    table.element.dataset.nodeId = String(node.id);
    if (fit) {
      const min = node.computeSize();
      const height = fit === "exact" ? min[1] : Math.max(node.size[1], min[1]);
      node.setSize([Math.max(node.size[0], min[0], MIN_WIDTH), height]);
    }
    node.setDirtyCanvas?.(true, true);
  }

  /** Rebuilds the table from the widget's text, unless it already shows that text. */
  function sync() {
    const text = rowsWidget.value;
    if (text === shownText) return;
    shownText = text;
    Object.assign(state, stack.parseRows(text));
    redraw("grow");
  }

  // Anything that sets the text (workflow load, API-format import, paste, undo) redraws the table.
  const callback = rowsWidget.callback;
  rowsWidget.callback = function (...args) {
    const result = callback?.apply(this, args);
    sync();
    return result;
  };

  // The node id is -1 until the graph adds the node; tests and styles find the table by it.
  const onAdded = node.onAdded;
  node.onAdded = function (...args) {
    const result = onAdded?.apply(this, args);
    table.element.dataset.nodeId = String(this.id);
    return result;
  };

  node.loralabStack = {
    sync,
    setTriggerWords(text) {
      state.triggerWords = text;
      redraw(false);
    },
  };
  sync();
  loraNames().then((names) => {
    state.names = names;
    redraw(false);
  });
}

app.registerExtension({
  name: "loralab.StackLoras",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      attachEditor(this);
      this.setSize([Math.max(this.size[0], MIN_WIDTH), this.computeSize()[1]]);
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      this.loralabStack?.sync();
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output, ...rest) {
      const result = onExecuted?.apply(this, [output, ...rest]);
      const words = output?.trigger_words;
      this.loralabStack?.setTriggerWords(Array.isArray(words) ? words.join(", ") : "");
      return result;
    };
  },

  // Belt and braces for hosts whose configure path skips onConfigure's widget values.
  loadedGraphNode(node) {
    if (node.type === NODE_TYPE) node.loralabStack?.sync();
  },
});
