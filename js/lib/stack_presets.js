// Named Stack LoRAs presets as the editor sees them: the host's list, shared by every node of the page.
//
// No host import: the owner passes in how to send a request, so the logic runs under `node --test`
// with a fake host. The host keeps the presets (GET/PUT/DELETE /loralab/stack-presets, nodes/host/routes.py);
// the name rule mirrors trainer/lora/stack_presets.py so a bad name is refused before any request.

import { parseRows, serializeRows } from "./stack_rows.js";

export const MAX_NAME = 64;
const PUNCTUATION = new Set([" ", "_", ".", "+", "-"]);
const RULE = `a preset name has 1 to ${MAX_NAME} letters, digits, spaces or _ . + -, and starts with a letter or a digit`;
const isWordChar = (ch) => /\p{L}|\p{Nd}/u.test(ch);

/** Why `name` cannot name a preset, or null when it can (the backend's rule). */
export function presetNameProblem(name) {
  if (typeof name !== "string" || name === "") return RULE;
  const chars = [...name.normalize("NFC")];
  if (chars.length > MAX_NAME) return `${RULE}; this one has ${chars.length} characters`;
  if (!isWordChar(chars[0])) return `${RULE}; this one starts with "${chars[0]}"`;
  const bad = [...new Set(chars.filter((ch) => !isWordChar(ch) && !PUNCTUATION.has(ch)))];
  if (bad.length) return `${RULE}; ${bad.slice(0, 5).map((ch) => JSON.stringify(ch)).join(", ")} cannot be used`;
  if (name !== name.trimEnd()) return `${RULE}; it cannot end with a space`;
  return null;
}

export function presetUrl(name) {
  return `/loralab/stack-presets/${encodeURIComponent(name)}`;
}

/** A preset's rows as the node's row objects (typed, defaults filled), whatever the host sent. */
export function rowsFromPreset(preset) {
  return parseRows(JSON.stringify(Array.isArray(preset?.rows) ? preset.rows : [])).rows;
}

const errorOf = (answer, doing) => answer.body?.error ?? `${doing} failed: the host answered HTTP ${answer.status}`;
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/**
 * @param {object} deps
 * @param {(method: string, url: string, body?: string) => Promise<{status: number, body: unknown}>} deps.request
 *   sends a request to the host; `body` of the answer is the parsed JSON (null if it was not JSON). May reject.
 */
export function createPresetStore({ request }) {
  let presets = null; // [{name, rows}] once listed
  let listing = null;
  const listeners = new Set();
  const publish = () => listeners.forEach((fn) => fn(presets));

  async function fetchList() {
    const answer = await request("GET", "/loralab/stack-presets");
    if (answer.status !== 200 || !Array.isArray(answer.body?.presets)) throw new Error(errorOf(answer, "Listing presets"));
    presets = answer.body.presets.filter((p) => typeof p?.name === "string" && Array.isArray(p.rows));
    publish();
    return presets;
  }

  return {
    /** The presets once listed, else null. */
    peek: () => presets,

    /** Finds a listed preset by name (undefined if none). */
    find: (name) => presets?.find((p) => p.name === name),

    /** The host's presets; one request shared by concurrent callers, asked again on `refresh`. Rejects on failure. */
    list(refresh = false) {
      if (presets && !refresh) return Promise.resolve(presets);
      listing ??= fetchList().finally(() => { listing = null; });
      return listing;
    },

    /** Calls `fn(presets)` after every change of the list; returns the unsubscribe function. */
    subscribe(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },

    /** Saves `rows` under `name` (replacing a preset of that name). Never rejects: {ok, message}. */
    async save(name, rows) {
      const problem = presetNameProblem(name);
      if (problem) return { ok: false, message: `${problem[0].toUpperCase()}${problem.slice(1)}.` };
      let answer;
      try {
        answer = await request("PUT", presetUrl(name), JSON.stringify({ rows: JSON.parse(serializeRows(rows)) }));
      } catch (e) {
        return { ok: false, message: `Could not save preset "${name}": ${e?.message ?? e}` };
      }
      if (answer.status !== 200 && answer.status !== 201) return { ok: false, message: errorOf(answer, "Saving") };
      const saved = { name: answer.body?.name ?? name, rows: answer.body?.rows ?? rows };
      presets = [...(presets ?? []).filter((p) => p.name !== saved.name), saved]
        .sort((a, b) => a.name.toLowerCase().localeCompare(b.name.toLowerCase()) || a.name.localeCompare(b.name));
      publish();
      const verb = answer.status === 201 ? "Saved" : "Replaced";
      return { ok: true, message: `${verb} preset "${saved.name}" (${plural(saved.rows.length, "row")}).` };
    },

    /** Deletes the preset `name`. Never rejects: {ok, message}. */
    async remove(name) {
      let answer;
      try {
        answer = await request("DELETE", presetUrl(name));
      } catch (e) {
        return { ok: false, message: `Could not delete preset "${name}": ${e?.message ?? e}` };
      }
      if (answer.status !== 200 && answer.status !== 404) return { ok: false, message: errorOf(answer, "Deleting") };
      presets = (presets ?? []).filter((p) => p.name !== name);
      publish();
      return answer.status === 200 ? { ok: true, message: `Deleted preset "${name}".` }
        : { ok: false, message: `There is no preset "${name}" any more.` };
    },
  };
}

/** The status line after loading a preset: how many rows, and how many name a file the host lacks. */
export function loadedMessage(name, rows, missing) {
  const count = missing.filter(Boolean).length;
  const lacking = count ? `; ${count} missing from the loras folders (marked in red)` : "";
  return `Loaded preset "${name}" (${plural(rows.length, "row")}${lacking}).`;
}
