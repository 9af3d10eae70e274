// The per-block sliders as plain DOM: a toggle, a status line and one range slider per block of the file.
// Renders a state and reports intents; owns no state (the wiring in js/block_sliders.js does).

import { el } from "./dom.js";
import { SLIDER } from "./block_sliders.js";
import { ensureStyle } from "./style.js";

const TOGGLE_HEIGHT = 22;
const STATUS_HEIGHT = 16;
const ROW_HEIGHT = 22;

function sliderRow(doc, row) {
  const value = el(doc, "span", { className: "loralab-block-value", textContent: String(row.weight),
    dataset: { testid: "loralab-block-value" } });
  const slider = el(doc, "input", {
    type: "range", min: String(SLIDER.min), max: String(SLIDER.max), step: String(SLIDER.step),
    value: String(row.weight), className: "loralab-block-slider",
    title: `${row.label}: strength x this for its ${row.layers} layer(s)`,
    dataset: { testid: "loralab-block-slider", block: row.block },
  });
  return el(doc, "div", { className: `loralab-block-row${row.weight === 1 ? "" : " loralab-block-changed"}`,
    dataset: { block: row.block } },
  [el(doc, "span", { className: "loralab-block-label", textContent: row.label, title: `${row.layers} layer(s)` }),
    slider, value]);
}

function showWeight(rowElement, weight) {
  const [, slider, value] = rowElement.children;
  slider.value = String(weight);
  value.textContent = String(weight);
  rowElement.classList.toggle("loralab-block-changed", weight !== 1);
}

/** Builds the element; `intents` receives {toggle()} and {weight(block, value)} (on release of a slider). */
export function createBlockSliders(doc, intents) {
  ensureStyle(doc);
  const toggle = el(doc, "button", { type: "button", className: "loralab-blocks-toggle",
    title: "Show a slider per block of the chosen file; moving one writes the block_weights text",
    dataset: { testid: "loralab-blocks-toggle" } });
  const status = el(doc, "div", { className: "loralab-blocks-status", dataset: { testid: "loralab-blocks-status" } });
  const list = el(doc, "div", { className: "loralab-blocks-list" });
  const root = el(doc, "div", { className: "loralab-blocks", dataset: { testid: "loralab-blocks" } },
    [toggle, status, list]);
  let shown = { open: false, rows: [] };

  toggle.addEventListener("click", () => intents.toggle());
  // While dragging only the number beside the slider follows; the text is written once, on release.
  list.addEventListener("input", (event) => {
    const slider = event.target.closest("input[data-block]");
    if (slider) slider.nextElementSibling.textContent = String(Number(slider.value));
  });
  list.addEventListener("change", (event) => {
    const slider = event.target.closest("input[data-block]");
    if (slider) intents.weight(slider.dataset.block, slider.value);
  });

  return {
    element: root,
    /** Shows `rows` (lib/block_sliders.js sliderRows) when `open`, and the status line. */
    render({ open, rows, statusText }) {
      shown = { open, rows };
      toggle.textContent = `${open ? "▾" : "▸"} block sliders`;
      toggle.dataset.open = String(open);
      status.textContent = open ? statusText : "";
      status.hidden = !open;
      const blocks = open ? rows.map((r) => r.block).join(",") : "";
      if (list.dataset.blocks === blocks) {
        // The same blocks: update in place, so a slider being moved keeps the keyboard focus and the pointer.
        rows.forEach((row, i) => showWeight(list.children[i], row.weight));
      } else {
        list.replaceChildren(...(open ? rows.map((row) => sliderRow(doc, row)) : []));
        list.dataset.blocks = blocks;
      }
    },
    /** The height the node must give the sliders. */
    minHeight() {
      return TOGGLE_HEIGHT + (shown.open ? STATUS_HEIGHT + shown.rows.length * ROW_HEIGHT : 0);
    },
  };
}
