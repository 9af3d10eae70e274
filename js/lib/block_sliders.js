// The per-block sliders' logic: the host's answer about a file's blocks (GET /loralab/loras/blocks) -> slider
// rows, a slider move -> new weights, and the weights -> the block-weight text the node's field holds.
//
// The host parses the text (trainer/lora/block_weights.py), so a preset, a positional list or block=value
// entries all set the sliders the same way the loaders would apply them; a slider edit writes `block=value`
// entries for the blocks not at 1, which give this file's layers the same weights.

export const SLIDER = { min: -1, max: 2, step: 0.05 };

const LABELS = { BASE: "TE", M00: "MID" };

/** The route's URL for a file and the text in its field. */
export function blocksUrl(name, text) {
  return `/loralab/loras/blocks?name=${encodeURIComponent(name)}&weights=${encodeURIComponent(text ?? "")}`;
}

/**
 * The route's answer as {answer, error}: `answer` the blocks of a file the host read; else `error`, why not (a file
 * it cannot read is answered 200 with readable: false and the reason; a refused text, 400 with the loaders' message).
 */
export function blocksResult(status, body) {
  if (status === 200 && body && body.readable !== false) return { answer: body, error: null };
  const reason = status === 200 ? body?.reason : body?.error;
  return { answer: null, error: typeof reason === "string" && reason ? reason : `the host answered ${status}` };
}

/** How a block is labelled next to its slider (the A1111 extension's names: TE for the text encoder, MID). */
export function blockLabel(block) {
  return LABELS[block] ?? block;
}

/** A slider value: clamped to the range and snapped to its step (no float dust such as 0.30000000000000004). */
export function snapWeight(value) {
  const number = Number(value);
  if (!Number.isFinite(number)) return 1;
  const clamped = Math.min(SLIDER.max, Math.max(SLIDER.min, number));
  const snapped = Number((Math.round(clamped / SLIDER.step) * SLIDER.step).toFixed(2));
  return snapped === 0 ? 0 : snapped; // never -0, which would print as "0" but compare oddly
}

/** The slider rows of a route answer: [{block, label, layers, weight}] (a weight outside the range is kept). */
export function sliderRows(answer) {
  const blocks = Array.isArray(answer?.blocks) ? answer.blocks : [];
  return blocks.filter((b) => typeof b?.block === "string").map((b) => ({
    block: b.block, label: blockLabel(b.block), layers: Number(b.layers) || 0,
    weight: Number.isFinite(b.weight) ? b.weight : 1,
  }));
}

/** The rows with one block's weight set (snapped); the others as they were. */
export function setWeight(rows, block, value) {
  return rows.map((r) => (r.block === block ? { ...r, weight: snapWeight(value) } : r));
}

/** The block-weight text of the rows: `block=value` for each block not at 1, in row order; "" when all are 1. */
export function weightsText(rows) {
  return rows.filter((r) => r.weight !== 1).map((r) => `${r.block}=${r.weight}`).join(", ");
}

/** The line above the sliders: what they cover, or why there are none. */
export function slidersStatus({ name, answer, error }) {
  if (!name) return "choose a LoRA file to see its blocks";
  if (error) return error;
  if (!answer) return "reading the file's blocks…";
  const count = answer.blocks?.length ?? 0;
  const outside = answer.outside ? `; ${answer.outside} layer(s) outside every block keep 1` : "";
  return count ? `${count} block(s) in this file${outside}` : `no layer of this file lies in a block${outside}`;
}
