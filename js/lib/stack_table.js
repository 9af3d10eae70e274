// The Stack LoRAs table as plain DOM: renders a state, reports user intents; owns no state.
//
// Kept apart from the host wiring so that the host's editor only appears in one file. Every control
// carries a data-testid (and a namespaced class) so browser tests and users' own scripts can find it.

import { createBlockSliders } from "./block_sliders_view.js";
import { el } from "./dom.js";
import { loraInfoElement, showLoraInfo } from "./lora_info_view.js";
import { missingRows, missingTitle } from "./stack_rows.js";
import { ensureStyle } from "./style.js";

const ROW_HEIGHT = 28 + 18; // the controls, then the file's info line
const CHROME_HEIGHT = 24 + 32 + 26 + 30 + 18; // header + add button + trigger-words line + presets bar + its status
const ERROR_HEIGHT = 34;

function strengthInput(doc, which, value) {
  return el(doc, "input", {
    type: "number", min: "-100", max: "100", step: "0.05", value: String(value),
    className: `loralab-stack-strength loralab-stack-strength-${which}`,
    title: `${which === "model" ? "Model" : "CLIP"} strength (-100 to 100)`,
    dataset: { testid: `loralab-stack-strength-${which}`, action: "strength", which },
  });
}

const BLOCK_WEIGHTS_TITLE = "Per-block strengths: a preset (INS, MIDD, OUTALL, ALL0.5, ...), 17 values for SD1.x, "
  + "12 for SDXL, 61 for Flux, or block=value entries such as MID=0, OUT03-OUT05=0.5. Empty: every block at 1.";

function blockWeightsInput(doc, value) {
  return el(doc, "input", {
    type: "text", value: value ?? "", placeholder: "all", className: "loralab-stack-blocks",
    title: BLOCK_WEIGHTS_TITLE, dataset: { testid: "loralab-stack-blocks", action: "blocks" },
  });
}

/** `names` null: the host's list is not known yet, so nothing is marked missing. */
function loraPicker(doc, current, names, missing) {
  const select = el(doc, "select", {
    className: `loralab-stack-lora${missing ? " loralab-stack-lora-missing" : ""}`,
    title: missing ? missingTitle(current) : current || "choose a LoRA",
    dataset: { testid: "loralab-stack-lora", action: "name" },
  });
  // A saved name the host does not list (file moved, other machine) stays selectable, marked missing,
  // so loading a workflow never rewrites the user's choice behind their back.
  const listed = names ?? [];
  const options = listed.includes(current) || current === "" ? listed : [current, ...listed];
  if (options.length === 0) select.append(el(doc, "option", { value: "", textContent: "(no LoRAs in models/loras)" }));
  for (const name of options) {
    const lacking = names !== null && !listed.includes(name);
    select.append(el(doc, "option", { value: name, textContent: lacking ? `${name} (missing)` : name }));
  }
  select.value = current;
  return select;
}

function button(doc, action, text, title) {
  return el(doc, "button", {
    type: "button", textContent: text, title,
    className: `loralab-stack-btn loralab-stack-${action}`, dataset: { testid: `loralab-stack-${action}`, action },
  });
}

/** The row's block sliders (lib/block_sliders_view.js), open when `blocks` is this row's: {rows, statusText}. */
function blockSliders(doc, intents, index, blocks) {
  const sliders = createBlockSliders(doc, {
    toggle: () => intents.blocksToggle?.(index),
    weight: (block, value) => intents.blocksWeight?.(index, block, value),
  });
  sliders.render({ open: blocks !== null, rows: blocks?.rows ?? [], statusText: blocks?.statusText ?? "" });
  return sliders;
}

/** The row's controls and, beneath them, its file's info line (`info`: lib/lora_metadata.js, or null) and its
 * block sliders (`sliders`). */
function rowElements(doc, row, index, count, names, info, missing, sliders) {
  const up = button(doc, "up", "↑", "Move up");
  const down = button(doc, "down", "↓", "Move down");
  up.disabled = index === 0;
  down.disabled = index === count - 1;
  const toggle = el(doc, "input", {
    type: "checkbox", checked: row.on, className: "loralab-stack-on", title: "Apply this LoRA",
    dataset: { testid: "loralab-stack-on", action: "toggle" },
  });
  const cells = [toggle, loraPicker(doc, row.lora, names, missing), strengthInput(doc, "model", row.strength_model),
    strengthInput(doc, "clip", row.strength_clip), blockWeightsInput(doc, row.block_weights),
    el(doc, "span", { className: "loralab-stack-tools" },
      [up, down, button(doc, "remove", "✕", "Remove this row")])];
  const off = row.on ? "" : " loralab-stack-row-off";
  const lacking = missing ? " loralab-stack-row-missing" : "";
  const rowData = { testid: "loralab-stack-row", index: String(index), ...(missing ? { missing: "true" } : {}) };
  return [
    el(doc, "tr", { className: `loralab-stack-row${off}${lacking}`, dataset: rowData,
      ...(missing ? { title: missingTitle(row.lora) } : {}) }, cells.map((c) => el(doc, "td", {}, [c]))),
    // The file's rank, alpha, base model and trigger words, under its controls and as wide as the table.
    el(doc, "tr", { className: `loralab-stack-info-row${off}`, dataset: { index: String(index) } },
      [el(doc, "td"), el(doc, "td", { colSpan: 5 }, [loraInfoElement(doc, info)])]),
    el(doc, "tr", { className: "loralab-stack-blocks-row", dataset: { index: String(index) } },
      [el(doc, "td"), el(doc, "td", { colSpan: 5 }, [sliders.element])]),
  ];
}

function presetBar(doc) {
  const select = el(doc, "select", {
    className: "loralab-preset-select", title: "Stack presets saved on this host",
    dataset: { testid: "loralab-preset-select", action: "preset-choose" },
  });
  const name = el(doc, "input", {
    type: "text", className: "loralab-preset-name", placeholder: "preset name", maxLength: 64,
    title: "Name to save the rows under: letters, digits, spaces or _ . + -, up to 64 characters",
    dataset: { testid: "loralab-preset-name" },
  });
  const status = el(doc, "div", { className: "loralab-preset-status", dataset: { testid: "loralab-preset-status" } });
  const presetButton = (action, text, title) => {
    const b = button(doc, `preset-${action}`, text, title);
    b.dataset.testid = `loralab-preset-${action}`;
    return b;
  };
  const bar = el(doc, "div", { className: "loralab-presets", dataset: { testid: "loralab-presets" } }, [
    select, presetButton("load", "Load", "Replace the rows with the chosen preset"),
    presetButton("delete", "Delete", "Delete the chosen preset from this host"), name,
    presetButton("save", "Save rows as", "Save these rows as a preset under the name on the left")]);
  return { bar, select, name, status };
}

/**
 * Builds the editor element. `intents` receives {add()}, {remove,moveUp,moveDown,toggle(i, on)},
 * {name(i, value)}, {strength(i, "model"|"clip", text)}, {blockWeights(i, text)}, the block sliders'
 * {blocksToggle(i), blocksWeight(i, block, value)}, and the preset menu's
 * {presetLoad(name), presetDelete(name), presetSave(name), presetsOpen()}, and {pointerEnter()}; the owner applies them and calls
 * render() with the state (`names` null while the host's list is unknown), `info`, each row's file info
 * (lib/lora_metadata.js) in row order, and `blocks`, the open row's sliders {index, rows, statusText} or null;
 * and showPresets() with the host's presets.
 */
export function createStackTable(doc, intents) {
  ensureStyle(doc);
  const error = el(doc, "div", { className: "loralab-stack-error", dataset: { testid: "loralab-stack-error" } });
  const body = el(doc, "tbody");
  const head = el(doc, "thead", {}, [el(doc, "tr", {}, ["on", "LoRA", "model", "clip", "blocks", ""].map(
    (t) => el(doc, "th", { textContent: t })))]);
  const table = el(doc, "table", { className: "loralab-stack-table" }, [head, body]);
  const add = button(doc, "add", "+ Add LoRA", "Add a row");
  const words = el(doc, "div", { className: "loralab-trigger-words", dataset: { testid: "loralab-trigger-words" } });
  const presets = presetBar(doc);
  const root = el(doc, "div", { className: "loralab-stack", dataset: { testid: "loralab-stack" } },
    [error, table, add, presets.bar, presets.status, words]);
  let rowCount = 0;
  let infoLines = []; // the rows' info elements, in row order
  let sliders = []; // the rows' block sliders, in row order

  root.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (!target || target.disabled) return;
    const index = Number(target.closest("tr")?.dataset.index);
    const preset = presets.select.value;
    ({ add: () => intents.add(), remove: () => intents.remove(index),
      up: () => intents.move(index, -1), down: () => intents.move(index, 1),
      "preset-load": () => preset && intents.presetLoad?.(preset),
      "preset-delete": () => preset && intents.presetDelete?.(preset),
      "preset-save": () => intents.presetSave?.(presets.name.value.trim()) })[target.dataset.action]?.();
  });
  presets.name.addEventListener("keydown", (event) => {
    if (event.key === "Enter") intents.presetSave?.(presets.name.value.trim());
  });
  // The pointer coming over the table is the owner's cue to ask the host for its LoRA names again, so a
  // file put back clears its row's "missing" mark before the user reaches the row.
  root.addEventListener("pointerenter", () => intents.pointerEnter?.());
  // Opening the menu asks the host again: a preset saved in another tab shows up.
  presets.select.addEventListener("focus", () => intents.presetsOpen?.());
  root.addEventListener("change", (event) => {
    const target = event.target;
    const index = Number(target.closest("tr")?.dataset.index);
    if (target.dataset.action === "toggle") intents.toggle(index, target.checked);
    else if (target.dataset.action === "name") intents.name(index, target.value);
    else if (target.dataset.action === "strength") intents.strength(index, target.dataset.which, target.value);
    else if (target.dataset.action === "blocks") intents.blockWeights?.(index, target.value);
    else if (target.dataset.action === "preset-choose") {
      if (target.value) presets.name.value = target.value; // saving again replaces it
      showPresetButtons();
    }
  });
  const showPresetButtons = () => {
    const chosen = presets.select.value !== "";
    for (const action of ["preset-load", "preset-delete"]) root.querySelector(`[data-action=${action}]`).disabled = !chosen;
  };
  showPresetButtons();

  return {
    element: root,
    /** Redraws everything; cheap at the row counts people use, and no stale control survives. */
    render({ rows, names = null, error: message, triggerWords, info = [], blocks = null }) {
      rowCount = rows.length;
      const missing = missingRows(rows, names);
      // A slider moved from the keyboard keeps the focus through the redraw its move causes.
      const focused = doc.activeElement?.closest?.("[data-testid=loralab-block-slider]");
      const refocus = focused && `tr[data-index="${focused.closest("tr").dataset.index}"] `
        + `[data-testid=loralab-block-slider][data-block="${focused.dataset.block}"]`;
      sliders = rows.map((_, i) => blockSliders(doc, intents, i, blocks?.index === i ? blocks : null));
      body.replaceChildren(...rows.flatMap((row, i) => rowElements(doc, row, i, rows.length, names, info[i] ?? null,
        missing[i], sliders[i])));
      if (refocus) body.querySelector(refocus)?.focus();
      infoLines = [...body.querySelectorAll(".loralab-lora-info")];
      error.textContent = message ? `The rows text is ${message}; editing replaces it.` : "";
      error.hidden = !message;
      words.textContent = triggerWords ? `trigger words: ${triggerWords}` : "";
      words.title = triggerWords || "Trigger words of the enabled LoRAs appear here after a run";
    },
    /** Shows the host's presets (null: not listed yet) and a status line (`isError` in red); keeps the choice. */
    showPresets(list, status = null, isError = false) {
      const chosen = presets.select.value;
      const names = (list ?? []).map((p) => p.name);
      const key = JSON.stringify(list === null ? null : names);
      // Rebuilt only when the list changed: the menu may be open while a refresh arrives.
      if (presets.select.dataset.shown !== key) {
        const first = list === null ? "presets: …" : names.length ? "presets…" : "no presets yet";
        presets.select.replaceChildren(el(doc, "option", { value: "", textContent: first }),
          ...names.map((n) => el(doc, "option", { value: n, textContent: n })));
        presets.select.value = names.includes(chosen) ? chosen : "";
        presets.select.dataset.shown = key;
      }
      showPresetButtons();
      if (status !== null) {
        presets.status.textContent = status;
        presets.status.dataset.error = isError ? "true" : "false";
      }
    },
    /** Updates only the rows' info lines (`info` in row order), leaving every control as it is. */
    showInfo(info) {
      infoLines.forEach((line, i) => showLoraInfo(line, info[i] ?? null));
    },
    /** The height the node must give the table to show every row without scrolling. */
    minHeight() {
      return CHROME_HEIGHT + rowCount * ROW_HEIGHT + sliders.reduce((sum, s) => sum + s.minHeight(), 0)
        + (error.hidden ? 0 : ERROR_HEIGHT);
    },
  };
}
