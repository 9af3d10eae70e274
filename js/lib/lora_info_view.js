// The one-line LoRA file info (rank, alpha, base model, trigger) as a DOM element; shows an info object.
//
// Load LoRA keeps one element and updates it; the Stack LoRAs table builds one per row on each render.

import { el } from "./dom.js";

/** Shows `info` (lib/lora_metadata.js; null for no file chosen) in `element`. */
export function showLoraInfo(element, info) {
  element.textContent = info?.line ?? "";
  element.title = info?.title ?? "";
  element.dataset.state = info?.state ?? "empty";
}

/** A new info element showing `info`; styled by lib/style.js (.loralab-lora-info). */
export function loraInfoElement(doc, info) {
  const element = el(doc, "div", { className: "loralab-lora-info", dataset: { testid: "loralab-lora-info" } });
  showLoraInfo(element, info);
  return element;
}
