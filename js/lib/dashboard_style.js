// The training dashboard's styles, injected once (the host imports the pack's .js, never .css).
// Kept apart from lib/style.js, which belongs to the Stack LoRAs editor; same theme variables.

const STYLE_ID = "loralab-dashboard-style";

const CSS = `
.loralab-dash [hidden] { display: none !important; } /* the parts below set display, which beats [hidden] */
.loralab-dash { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; overflow: hidden;
  font: 12px sans-serif; color: var(--input-text, #ddd); padding: 2px 0; }
.loralab-dash-head { display: flex; justify-content: space-between; align-items: baseline; gap: 6px; height: 18px; }
.loralab-dash-state { font-weight: bold; white-space: nowrap; }
.loralab-dash[data-state=running] .loralab-dash-state { color: #6c6; }
.loralab-dash[data-state=error] .loralab-dash-state { color: var(--error-text, #f66); }
.loralab-dash-muted { opacity: 0.65; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.loralab-dash-bar { height: 8px; border-radius: 4px; background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #444); overflow: hidden; }
.loralab-dash-bar > div { height: 100%; width: 0; background: #4a8fdd; transition: width 0.2s; }
.loralab-dash[data-state=stopped] .loralab-dash-bar > div, .loralab-dash[data-state=interrupted] .loralab-dash-bar > div { background: #c90; }
.loralab-dash[data-state=error] .loralab-dash-bar > div { background: #c44; }
.loralab-dash-stats { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 1px 8px; }
.loralab-dash-stats div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; height: 16px; }
.loralab-dash-stats span { opacity: 0.6; }
.loralab-dash-chart { position: relative; height: 110px; border: 1px solid var(--border-color, #444);
  border-radius: 4px; background: var(--comfy-input-bg, #222); }
.loralab-dash-chart svg { position: absolute; inset: 4px; width: calc(100% - 8px); height: calc(100% - 8px); overflow: visible; }
.loralab-dash-chart path { fill: none; vector-effect: non-scaling-stroke; stroke-linejoin: round; stroke-linecap: round; }
.loralab-dash-raw { stroke: #7aa7e0; stroke-width: 1; opacity: 0.35; }
.loralab-dash-smooth { stroke: #7aa7e0; stroke-width: 2.2; }
.loralab-dash-val { stroke: #e0a040; stroke-width: 6; }
.loralab-dash-axis { position: absolute; font-size: 10px; opacity: 0.6; pointer-events: none; }
.loralab-dash-logbtn { position: absolute; top: 2px; right: 4px; height: 16px; padding: 0 4px; font: 10px sans-serif;
  color: inherit; background: transparent; border: 1px solid var(--border-color, #444); border-radius: 3px;
  cursor: pointer; opacity: 0.6; }
.loralab-dash-logbtn[aria-pressed=true] { opacity: 1; background: rgba(74, 143, 221, 0.35); }
.loralab-dash-hist { position: relative; height: 70px; box-sizing: border-box; border: 1px solid var(--border-color, #444);
  border-radius: 4px; background: var(--comfy-input-bg, #222); }
.loralab-dash-hist-head { position: absolute; top: 1px; left: 4px; right: 4px; height: 13px; display: flex;
  justify-content: space-between; gap: 6px; font-size: 10px; opacity: 0.7; white-space: nowrap; overflow: hidden; }
.loralab-dash-hist svg { position: absolute; left: 4px; top: 16px; width: calc(100% - 8px); height: calc(100% - 32px);
  border-bottom: 1px solid var(--border-color, #444); }
.loralab-dash-hist rect { fill: #7aa7e0; opacity: 0.85; }
.loralab-dash-hist rect:hover { opacity: 1; }
.loralab-dash-hist-axis { position: absolute; left: 4px; right: 4px; bottom: 1px; height: 13px; font-size: 10px;
  opacity: 0.6; pointer-events: none; }
.loralab-dash-hist-axis span { position: absolute; top: 0; white-space: nowrap; }
.loralab-dash-empty { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center; opacity: 0.5; }
.loralab-dash-samples { display: flex; gap: 6px; overflow-x: auto; height: 70px; }
.loralab-dash-samples figure { margin: 0; display: flex; flex-direction: column; align-items: center; flex: none; }
.loralab-dash-samples figcaption { font-size: 10px; opacity: 0.7; }
.loralab-dash-thumbs { display: flex; gap: 2px; }
.loralab-dash-thumbs img { height: 52px; width: auto; max-width: 180px; object-fit: contain; border-radius: 3px;
  cursor: zoom-in; background: #000; }
.loralab-dash-ckpts { max-height: 52px; overflow-y: auto; margin: 0; padding: 0; list-style: none; }
.loralab-dash-ckpts li { height: 16px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; user-select: text; }
.loralab-dash-message { white-space: normal; overflow-wrap: anywhere; max-height: 34px; overflow-y: auto; }
.loralab-dash-message.loralab-dash-bad { color: var(--error-text, #f66); }
.loralab-dash-buttons { display: flex; gap: 4px; height: 26px; }
.loralab-dash-buttons button { flex: 1; height: 24px; font: inherit; color: inherit; cursor: pointer;
  background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #444); border-radius: 4px; }
.loralab-dash-buttons button:disabled { opacity: 0.35; cursor: default; }
.loralab-dash-buttons button:not(:disabled):hover { filter: brightness(1.3); }
.loralab-dash-overlay { position: fixed; inset: 0; z-index: 10000; background: rgba(0, 0, 0, 0.8);
  display: flex; flex-direction: column; align-items: center; justify-content: center; gap: 8px;
  color: #eee; font: 13px sans-serif; cursor: zoom-out; }
.loralab-dash-overlay img { width: 90vw; height: 80vh; object-fit: contain; image-rendering: pixelated; }
`;

export function ensureDashboardStyle(doc) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  doc.head.append(style);
}
