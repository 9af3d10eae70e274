// Graph-editor wiring for "Stack LoRAs": a DOM table in place of the node's raw `loras` JSON text.
//
// The hidden `loras` widget stays the single source of truth: it is what the workflow saves and what
// the API prompt sends, so headless users and old workflows keep working without this file. The table
// is a view of that text: every edit rewrites it, and every load rebuilds the table from it. Under each
// row the table shows its file's rank, alpha, base model and trigger words (js/lora_library.js); a row
// naming a file the host does not list is marked missing. Under the rows, a preset menu saves the rows
// under a name on the host and loads them into any Stack LoRAs node (js/lib/stack_presets.js).

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { hideWidget } from "./lib/hidden_widget.js";
import { runAfter } from "./lib/node_hooks.js";
import { setWeight, sliderRows, slidersStatus, weightsText } from "./lib/block_sliders.js";
import { loraBlocks, loraInfo, loraNames } from "./lora_library.js";
import { LOADING_INFO } from "./lib/lora_metadata.js";
import { createPresetStore, loadedMessage, rowsFromPreset } from "./lib/stack_presets.js";
import * as stack from "./lib/stack_rows.js";
import { createStackTable } from "./lib/stack_table.js";

const NODE_TYPE = "LoraLabStackLoras";
const ROWS_WIDGET = "loras";
const EDITOR_WIDGET = "loralab_stack_editor";
const MIN_WIDTH = 480;
const NAMES_REFRESH_MS = 5000; // at most one names request per node this often, on pointer entry

/** The host's stack presets, one list per page shared by every Stack LoRAs node. */
const presets = createPresetStore({
  async request(method, url, body) {
    const init = body === undefined ? { method } : { method, body, headers: { "Content-Type": "application/json" } };
    const resp = await api.fetchApi(url, init);
    return { status: resp.status, body: await resp.json().catch(() => null) };
  },
});

function attachEditor(node) {
  const rowsWidget = node.widgets?.find((w) => w.name === ROWS_WIDGET);
  if (!rowsWidget || node.loralabStack) return;
  hideWidget(rowsWidget);

  // names: null until the host has listed its LoRA files, so no row is marked missing before then.
  // blocks: the row whose block sliders are open, {index, rows, answer, error}, or null.
  const state = { rows: [], names: null, error: null, triggerWords: "", blocks: null };
  let namesAskedAt = 0;
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
  /** Asks the host for the open row's blocks under its text; the answer is dropped if another was asked since. */
  async function askBlocks() {
    const open = state.blocks;
    const row = open && state.rows[open.index];
    if (!row) return;
    Object.assign(open, { answer: null, error: null });
    redraw("exact");
    const { answer, error } = await loraBlocks(row.lora, row.block_weights ?? "");
    if (state.blocks !== open) return;
    Object.assign(open, { answer, error, rows: sliderRows(answer) });
    redraw("exact");
  }
  const commitClosing = (rows) => {
    state.blocks = null; // rows added, removed, moved or replaced: the open sliders would describe another row
    commit(rows);
  };
  const table = createStackTable(document, {
    add: async () => {
      state.names = await loraNames(true); // a file saved since the node was drawn becomes the default
      // rows read after the wait: no edit in between is lost
      commitClosing(stack.addRow(state.rows, state.names));
    },
    remove: (i) => commitClosing(stack.removeRow(state.rows, i)),
    move: (i, delta) => commitClosing(stack.moveRow(state.rows, i, delta)),
    toggle: (i, on) => commit(stack.toggleRow(state.rows, i, on)),
    name: (i, name) => {
      loraInfo.retry(name); // choosing a file again asks again if it was missing or the host failed
      commit(stack.setName(state.rows, i, name));
      if (state.blocks?.index === i) askBlocks();
    },
    strength: (i, which, text) => commit(stack.setStrength(state.rows, i, which, text)),
    blockWeights: (i, text) => {
      commit(stack.setBlockWeights(state.rows, i, text));
      if (state.blocks?.index === i) askBlocks(); // typed text: the sliders follow
    },
    blocksToggle(i) {
      state.blocks = state.blocks?.index === i ? null : { index: i, rows: [], answer: null, error: null };
      if (state.blocks) askBlocks();
      else redraw("exact");
    },
    blocksWeight(i, block, value) {
      if (state.blocks?.index !== i) return;
      state.blocks.rows = setWeight(state.blocks.rows, block, value);
      commit(stack.setBlockWeights(state.rows, i, weightsText(state.blocks.rows)));
    },
    async pointerEnter() {
      if (Date.now() - namesAskedAt < NAMES_REFRESH_MS) return;
      namesAskedAt = Date.now();
      const names = await loraNames(true);
      const marks = (list) => JSON.stringify(stack.missingRows(state.rows, list));
      const changed = marks(names) !== marks(state.names);
      state.names = names;
      if (changed) redraw(false); // only then: a redraw would drop what the user is typing
    },
    presetsOpen: () => presets.list(true).catch((e) => table.showPresets(presets.peek(), e.message, true)),
    async presetSave(name) {
      if (state.error) {
        table.showPresets(presets.peek(), "The rows text cannot be read; edit the rows before saving them.", true);
        return;
      }
      if (presets.find(name) && !window.confirm(`Replace the preset "${name}" with these rows?`)) return;
      const { ok, message } = await presets.save(name, state.rows);
      table.showPresets(presets.peek(), message, !ok);
    },
    async presetLoad(name) {
      const preset = presets.find(name);
      if (!preset) return;
      const rows = rowsFromPreset(preset);
      state.names = await loraNames(true); // a file added since the page loaded is not "missing"
      commitClosing(rows);
      table.showPresets(presets.peek(), loadedMessage(name, rows, stack.missingRows(rows, state.names)));
    },
    async presetDelete(name) {
      if (!window.confirm(`Delete the preset "${name}" from this host?`)) return;
      const { ok, message } = await presets.remove(name);
      table.showPresets(presets.peek(), message, !ok);
    },
  });
  const showPresets = (list) => table.showPresets(list);
  const unsubscribe = presets.subscribe(showPresets);
  showPresets(presets.peek());
  presets.list().catch((e) => table.showPresets(null, `Could not list presets: ${e.message}`, true));
  node.addDOMWidget(EDITOR_WIDGET, "loralab_stack", table.element, {
    serialize: false, // the rows already travel in `loras`
    getMinHeight: () => table.minHeight(),
    getValue: () => rowsWidget.value,
    setValue: () => {},
  }).serialize = false;

  const shownInfo = ({ lora }) => {
    const info = loraInfo.peek(lora);
    return info === undefined ? LOADING_INFO : info;
  };
  /** Each row's file info; files not read yet are read (one request per file name), then shown. */
  function rowsInfo() {
    for (const { lora } of state.rows) {
      // Only the info lines change then: a full redraw would drop what the user is typing in a strength box.
      if (loraInfo.peek(lora) === undefined) loraInfo.get(lora).then(() => table.showInfo(state.rows.map(shownInfo)));
    }
    return state.rows.map(shownInfo);
  }

  /** fit: "exact" snaps the height to the rows (after add/remove), "grow" only enlarges (on load). */
  function redraw(fit) {
    const open = state.blocks;
    const blocks = open && { index: open.index, rows: open.rows, statusText: slidersStatus({
      name: state.rows[open.index]?.lora, answer: open.answer, error: open.error }) };
    table.render({ ...state, info: rowsInfo(), blocks });
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
    Object.assign(state, stack.parseRows(text), { blocks: null });
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
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    unsubscribe(); // a removed node's table no longer follows the preset list
    return onRemoved?.apply(this, args);
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

    runAfter(nodeType.prototype, "onNodeCreated", function () {
      attachEditor(this);
      this.setSize([Math.max(this.size[0], MIN_WIDTH), this.computeSize()[1]]);
    });
    runAfter(nodeType.prototype, "onConfigure", function () {
      this.loralabStack?.sync();
    });
    runAfter(nodeType.prototype, "onExecuted", function (output) {
      const words = output?.trigger_words;
      this.loralabStack?.setTriggerWords(Array.isArray(words) ? words.join(", ") : "");
    });
  },

  // Belt and braces for hosts whose configure path skips onConfigure's widget values.
  loadedGraphNode(node) {
    if (node.type === NODE_TYPE) node.loralabStack?.sync();
  },
});
