// The host's LoRA files as the editor sees them: the names in the loras folders and each file's info line
// (rank, alpha, base model, trigger words), each asked of the host once per page and shared by all nodes,
// and a file's blocks under a block-weight text (asked each time: the text changes).
// No extension of its own: js/stack_loras.js and js/lora_metadata.js import it.

import { api } from "../../scripts/api.js";
import { blocksResult, blocksUrl } from "./lib/block_sliders.js";
import { createLoraInfoCache } from "./lib/lora_info_cache.js";

let namesRequest = null;

/** The host's LoRA file names; rejects when the host cannot list them. One request until `refresh`. */
function requestNames(refresh = false) {
  if (!namesRequest || refresh) {
    const request = api.fetchApi("/models/loras")
      .then((resp) => (resp.ok ? resp.json() : Promise.reject(new Error(`GET /models/loras answered ${resp.status}`))))
      .then((list) => (Array.isArray(list) ? list.filter((n) => typeof n === "string") : []));
    // A failure is not cached: the next call asks again.
    request.catch(() => { if (namesRequest === request) namesRequest = null; });
    namesRequest = request;
  }
  return namesRequest;
}

/** The host's LoRA file names, or [] (with a warning) when the host cannot list them. */
export function loraNames(refresh = false) {
  return requestNames(refresh).catch((e) => {
    console.warn("[LoRA Lab] could not list LoRA files:", e);
    return [];
  });
}

/** GET a host route: the status, and the parsed JSON answer (null when it is not JSON). */
async function fetchInfo(url) {
  const resp = await api.fetchApi(url);
  return { status: resp.status, body: await resp.json().catch(() => null) };
}

/** Every LoRA file's info line, from LoRA Lab's GET /loralab/loras/info once per file name. */
export const loraInfo = createLoraInfoCache({ listNames: requestNames, fetchInfo });

/** A file's blocks with their weights under `text` (GET /loralab/loras/blocks): {answer} or {error}. */
export async function loraBlocks(name, text) {
  try {
    const { status, body } = await fetchInfo(blocksUrl(name, text));
    return blocksResult(status, body);
  } catch (e) {
    return { answer: null, error: `could not ask the host: ${e.message}` };
  }
}
