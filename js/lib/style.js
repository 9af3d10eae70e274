// LoRA Lab's editor styles, injected once: the host imports every .js of the pack but no .css.
// Colours come from the host's theme variables so the widgets follow light and dark palettes.

const STYLE_ID = "loralab-style";

const CSS = `
.loralab-stack { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; overflow: auto;
  font: 12px sans-serif; color: var(--input-text, #ddd); padding: 2px 0; }
.loralab-stack-table { width: 100%; border-collapse: collapse; table-layout: fixed; }
.loralab-stack-table th { height: 20px; font-weight: normal; opacity: 0.7; text-align: left; padding: 0 2px; }
.loralab-stack-table th:nth-child(1) { width: 26px; }
.loralab-stack-table th:nth-child(3), .loralab-stack-table th:nth-child(4) { width: 58px; }
.loralab-stack-table th:nth-child(5) { width: 64px; }
.loralab-stack-table th:nth-child(6) { width: 78px; }
.loralab-stack-table td { height: 28px; padding: 0 2px; box-sizing: border-box; }
.loralab-stack-row-off td:nth-child(n+2):nth-child(-n+5) { opacity: 0.45; } /* dim the settings and info line, not the tools */
.loralab-stack select, .loralab-stack input[type=number], .loralab-stack input[type=text], .loralab-stack-btn,
.loralab-trigger-words {
  box-sizing: border-box; height: 24px; font: inherit; color: inherit;
  background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #444); border-radius: 4px; }
.loralab-stack select, .loralab-stack input[type=number], .loralab-stack input[type=text] { width: 100%; padding: 0 4px; }
.loralab-stack-tools { display: flex; gap: 2px; }
.loralab-stack-btn { cursor: pointer; min-width: 24px; padding: 0 4px; }
.loralab-stack-btn:disabled { opacity: 0.35; cursor: default; }
.loralab-stack-btn:not(:disabled):hover { filter: brightness(1.3); }
.loralab-stack-add { height: 26px; }
.loralab-stack-error { color: var(--error-text, #f66); white-space: normal; }
.loralab-stack-table .loralab-stack-info-row td { height: 18px; padding-top: 0; }
.loralab-stack-table .loralab-stack-blocks-row td { height: auto; padding: 0 2px 2px; }
.loralab-lora-info { box-sizing: border-box; height: 18px; line-height: 18px; padding: 0 4px;
  font: 11px sans-serif; color: var(--input-text, #ddd); opacity: 0.8;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; user-select: text; }
.loralab-lora-info[data-state=loading], .loralab-lora-info[data-state=none] { opacity: 0.55; }
.loralab-lora-info[data-state=missing], .loralab-lora-info[data-state=invalid],
.loralab-lora-info[data-state=error] { color: var(--error-text, #f66); opacity: 1; }
.loralab-stack select.loralab-stack-lora-missing { border-color: var(--error-text, #f66); color: var(--error-text, #f66); }
.loralab-presets { display: flex; gap: 4px; align-items: center; }
.loralab-presets select { flex: 1 1 40%; min-width: 0; }
.loralab-presets input[type=text] { flex: 1 1 30%; min-width: 0; }
.loralab-presets .loralab-stack-btn { flex: none; }
.loralab-preset-status { min-height: 14px; font: 11px sans-serif; opacity: 0.8; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.loralab-preset-status[data-error=true] { color: var(--error-text, #f66); opacity: 1; }
.loralab-trigger-words { height: auto; min-height: 22px; padding: 3px 6px; border-style: dashed; opacity: 0.85;
  font: 12px sans-serif; color: var(--input-text, #ddd);
  overflow-wrap: anywhere; user-select: text; }
.loralab-blocks { box-sizing: border-box; font: 11px sans-serif; color: var(--input-text, #ddd); }
.loralab-blocks-toggle { box-sizing: border-box; height: 20px; padding: 0 6px; font: inherit; color: inherit;
  cursor: pointer; background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #444);
  border-radius: 4px; }
.loralab-blocks-status { height: 16px; line-height: 16px; opacity: 0.75; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.loralab-block-row { display: flex; align-items: center; gap: 6px; height: 22px; }
.loralab-block-label { flex: 0 0 44px; opacity: 0.85; }
.loralab-block-slider { flex: 1 1 auto; min-width: 60px; }
.loralab-block-value { flex: 0 0 34px; text-align: right; font-variant-numeric: tabular-nums; }
.loralab-block-changed .loralab-block-label, .loralab-block-changed .loralab-block-value { font-weight: bold; opacity: 1; }
.loralab-chart { box-sizing: border-box; display: flex; flex-direction: column; gap: 2px;
  font: 11px sans-serif; color: var(--input-text, #ddd); }
.loralab-chart svg { width: 100%; display: block; background: var(--comfy-input-bg, #222); border-radius: 3px; }
.loralab-chart-line { height: 16px; line-height: 16px; opacity: 0.8; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.loralab-chart-kept { fill: none; stroke: #4c9be8; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.loralab-chart-cut { fill: none; stroke: #888; stroke-width: 1; stroke-dasharray: 3 2; vector-effect: non-scaling-stroke; }
.loralab-chart-cutline { stroke: #e8a33c; stroke-width: 1; vector-effect: non-scaling-stroke; }
.loralab-chart-bar { fill: #4c9be8; opacity: 0.7; cursor: pointer; }
.loralab-chart-bar-selected { fill: #e8a33c; opacity: 1; }
.loralab-trigger-words:empty::before { content: "trigger words appear here after a run"; opacity: 0.5; }
`;

export function ensureStyle(doc) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  doc.head.append(style);
}
