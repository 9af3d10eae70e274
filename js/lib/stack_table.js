// The Stack LoRAs table as plain DOM: renders a state, reports user intents; owns no state.
//
// Kept apart from the host wiring so that the host's editor only appears in one file. Every control
// carries a data-testid (and a namespaced class) so browser tests and users' own scripts can find it.

import { el } from "./dom.js";
import { loraInfoElement, showLoraInfo } from "./lora_info_view.js";
import { ensureStyle } from "./style.js";

const ROW_HEIGHT = 28 + 18; // the controls, then the file's info line
const CHROME_HEIGHT = 24 + 32 + 26; // header + add button + trigger-words line
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

function loraPicker(doc, current, names) {
  const select = el(doc, "select", {
    className: "loralab-stack-lora", title: current || "choose a LoRA",
    dataset: { testid: "loralab-stack-lora", action: "name" },
  });
  // A saved name the host does not list (file moved, other machine) stays selectable, marked missing,
  // so loading a workflow never rewrites the user's choice behind their back.
  const options = names.includes(current) || current === "" ? names : [current, ...names];
  if (options.length === 0) select.append(el(doc, "option", { value: "", textContent: "(no LoRAs in models/loras)" }));
  for (const name of options) {
    const missing = !names.includes(name);
    select.append(el(doc, "option", { value: name, textContent: missing ? `${name} (missing)` : name }));
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

/** The row's controls and, beneath them, its file's info line (`info`: lib/lora_metadata.js, or null). */
function rowElements(doc, row, index, count, names, info) {
  const up = button(doc, "up", "↑", "Move up");
  const down = button(doc, "down", "↓", "Move down");
  up.disabled = index === 0;
  down.disabled = index === count - 1;
  const toggle = el(doc, "input", {
    type: "checkbox", checked: row.on, className: "loralab-stack-on", title: "Apply this LoRA",
    dataset: { testid: "loralab-stack-on", action: "toggle" },
  });
  const cells = [toggle, loraPicker(doc, row.lora, names), strengthInput(doc, "model", row.strength_model),
    strengthInput(doc, "clip", row.strength_clip), blockWeightsInput(doc, row.block_weights),
    el(doc, "span", { className: "loralab-stack-tools" },
      [up, down, button(doc, "remove", "✕", "Remove this row")])];
  const off = row.on ? "" : " loralab-stack-row-off";
  return [
    el(doc, "tr", { className: `loralab-stack-row${off}`, dataset: { testid: "loralab-stack-row", index: String(index) } },
      cells.map((c) => el(doc, "td", {}, [c]))),
    // The file's rank, alpha, base model and trigger words, under its controls and as wide as the table.
    el(doc, "tr", { className: `loralab-stack-info-row${off}`, dataset: { index: String(index) } },
      [el(doc, "td"), el(doc, "td", { colSpan: 5 }, [loraInfoElement(doc, info)])]),
  ];
}

/**
 * Builds the editor element. `intents` receives {add()}, {remove,moveUp,moveDown,toggle(i, on)},
 * {name(i, value)}, {strength(i, "model"|"clip", text)}, {blockWeights(i, text)}; the owner applies them and calls render() with
 * the state and `info`, each row's file info (lib/lora_metadata.js) in row order.
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
  const root = el(doc, "div", { className: "loralab-stack", dataset: { testid: "loralab-stack" } },
    [error, table, add, words]);
  let rowCount = 0;
  let infoLines = []; // the rows' info elements, in row order

  root.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (!target || target.disabled) return;
    const index = Number(target.closest("tr")?.dataset.index);
    ({ add: () => intents.add(), remove: () => intents.remove(index),
      up: () => intents.move(index, -1), down: () => intents.move(index, 1) })[target.dataset.action]?.();
  });
  root.addEventListener("change", (event) => {
    const target = event.target;
    const index = Number(target.closest("tr")?.dataset.index);
    if (target.dataset.action === "toggle") intents.toggle(index, target.checked);
    else if (target.dataset.action === "name") intents.name(index, target.value);
    else if (target.dataset.action === "strength") intents.strength(index, target.dataset.which, target.value);
    else if (target.dataset.action === "blocks") intents.blockWeights?.(index, target.value);
  });

  return {
    element: root,
    /** Redraws everything; cheap at the row counts people use, and no stale control survives. */
    render({ rows, names, error: message, triggerWords, info = [] }) {
      rowCount = rows.length;
      body.replaceChildren(...rows.flatMap((row, i) => rowElements(doc, row, i, rows.length, names, info[i] ?? null)));
      infoLines = [...body.querySelectorAll(".loralab-lora-info")];
      error.textContent = message ? `The rows text is ${message}; editing replaces it.` : "";
      error.hidden = !message;
      words.textContent = triggerWords ? `trigger words: ${triggerWords}` : "";
      words.title = triggerWords || "Trigger words of the enabled LoRAs appear here after a run";
    },
    /** Updates only the rows' info lines (`info` in row order), leaving every control as it is. */
    showInfo(info) {
      infoLines.forEach((line, i) => showLoraInfo(line, info[i] ?? null));
    },
    /** The height the node must give the table to show every row without scrolling. */
    minHeight() {
      return CHROME_HEIGHT + rowCount * ROW_HEIGHT + (error.hidden ? 0 : ERROR_HEIGHT);
    },
  };
}
