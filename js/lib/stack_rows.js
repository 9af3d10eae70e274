// Row state of the Stack LoRAs editor: pure functions over plain row objects, no DOM, no host.
//
// The node's `loras` widget holds the rows as JSON text; that text is what saved workflows and API
// prompts carry, so every function here returns a new array and `serializeRows` is the only writer.
// Field names and defaults mirror the backend's parser (trainer/lora/stack.py: parse_rows).

export const STRENGTH_MIN = -100;
export const STRENGTH_MAX = 100;

/** Rounds to 0.01 and clamps to [-100, 100]; null for anything that is not a finite number. */
export function clampStrength(value) {
  const n = typeof value === "string" ? Number(value.trim() === "" ? NaN : value) : value;
  if (typeof n !== "number" || !Number.isFinite(n)) return null;
  const clamped = Math.min(STRENGTH_MAX, Math.max(STRENGTH_MIN, n));
  const rounded = Math.round(clamped * 100) / 100;
  return rounded === 0 ? 0 : rounded; // no "-0" in the JSON
}

/** A row with every field present and typed; unknown fields are dropped (the backend rejects them). */
function normalizeRow(raw) {
  // "strength" is the backend's shorthand for both strengths.
  const both = clampStrength(raw.strength) ?? 1;
  const model = clampStrength(raw.strength_model) ?? both;
  const clip = clampStrength(raw.strength_clip) ?? ("strength" in raw ? both : model);
  const row = {
    lora: typeof raw.lora === "string" ? raw.lora : "",
    on: typeof raw.on === "boolean" ? raw.on : true,
    strength_model: model,
    strength_clip: clip,
  };
  // Per-block strengths (trainer/lora/block_weights.py), kept as typed; absent = every block at 1.
  const blocks = typeof raw.block_weights === "string" ? raw.block_weights.trim() : "";
  return blocks ? { ...row, block_weights: blocks } : row;
}

/**
 * Rows from the widget's JSON text. Never throws: text that is not a JSON list gives no rows and an
 * error message, so the editor can say so instead of silently overwriting what the user typed.
 * @returns {{rows: object[], error: string | null}}
 */
export function parseRows(text) {
  if (typeof text !== "string" || text.trim() === "") return { rows: [], error: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    return { rows: [], error: `not valid JSON (${e.message})` };
  }
  if (!Array.isArray(data)) return { rows: [], error: "not a JSON list of rows" };
  const rows = data.filter((r) => r !== null && typeof r === "object" && !Array.isArray(r)).map(normalizeRow);
  const skipped = data.length - rows.length;
  return { rows, error: skipped ? `${skipped} entr${skipped === 1 ? "y is" : "ies are"} not row objects` : null };
}

/** The JSON text the backend reads: a list of {lora, on, strength_model, strength_clip[, block_weights]}. */
export function serializeRows(rows) {
  return JSON.stringify(rows.map((r) => ({
    lora: r.lora, on: r.on, strength_model: r.strength_model, strength_clip: r.strength_clip,
    // Written only when set, so rows without block weights read as they did before the field existed.
    ...(r.block_weights ? { block_weights: r.block_weights } : {}),
  })));
}

/** A new row: the first LoRA the host lists (or none yet), switched on, full strength. */
export function newRow(loraNames = []) {
  return { lora: loraNames.length ? loraNames[0] : "", on: true, strength_model: 1, strength_clip: 1 };
}

export function addRow(rows, loraNames = []) {
  return [...rows, newRow(loraNames)];
}

function inRange(rows, index) {
  return Number.isInteger(index) && index >= 0 && index < rows.length;
}

function updateRow(rows, index, patch) {
  if (!inRange(rows, index)) return [...rows];
  return rows.map((r, i) => (i === index ? { ...r, ...patch } : r));
}

export function removeRow(rows, index) {
  return rows.filter((_, i) => i !== index);
}

/** Moves a row by `delta` places (-1 = up); a move past either end leaves the order unchanged. */
export function moveRow(rows, index, delta) {
  const target = index + delta;
  if (!inRange(rows, index) || !inRange(rows, target)) return [...rows];
  const out = [...rows];
  const [row] = out.splice(index, 1);
  out.splice(target, 0, row);
  return out;
}

/** Switches a row on or off; without `on`, flips it. */
export function toggleRow(rows, index, on) {
  if (!inRange(rows, index)) return [...rows];
  return updateRow(rows, index, { on: typeof on === "boolean" ? on : !rows[index].on });
}

/** Sets "model" or "clip" strength; a value that is not a number keeps the old one. */
export function setStrength(rows, index, which, value) {
  const key = { model: "strength_model", clip: "strength_clip" }[which];
  if (!key) throw new Error(`strength must be "model" or "clip", got ${JSON.stringify(which)}`);
  const strength = clampStrength(value);
  return strength === null ? [...rows] : updateRow(rows, index, { [key]: strength });
}

export function setName(rows, index, name) {
  return typeof name === "string" ? updateRow(rows, index, { lora: name }) : [...rows];
}

/** Sets a row's block weights text (e.g. "INS", "MID=0"); empty text removes them (every block at 1). */
export function setBlockWeights(rows, index, text) {
  if (typeof text !== "string" || !inRange(rows, index)) return [...rows];
  const { block_weights: _old, ...rest } = rows[index];
  const blocks = text.trim();
  return rows.map((r, i) => (i === index ? (blocks ? { ...rest, block_weights: blocks } : rest) : r));
}

/**
 * Which rows name a LoRA the host does not list (moved file, a preset or workflow from another machine):
 * one boolean per row. `names` null means the list is not known yet: no row is marked until it is.
 * A row with no file chosen yet is not "missing".
 */
export function missingRows(rows, names) {
  if (!Array.isArray(names)) return rows.map(() => false);
  const listed = new Set(names);
  return rows.map((r) => typeof r.lora === "string" && r.lora !== "" && !listed.has(r.lora));
}

/** The tooltip of a missing row: what is wrong and what to do, in the user's terms. */
export function missingTitle(name) {
  return `Missing: "${name}" is not in the host's loras folders (models/loras). Put the file back there `
    + "(then choose it again), or choose another LoRA; until then a run stops at this row.";
}
