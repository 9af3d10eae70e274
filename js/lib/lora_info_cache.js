// Each LoRA file's display info, read once per file name per page and shared by every node that shows it.
//
// No host import: the owner passes in how to list the loras folder and how to fetch a URL, so the
// request logic runs under `node --test` with fakes. A name the host does not list is reported as
// missing without asking for its info: the host answers such a request with a 404, which the
// browser logs as a console error.

import {
  infoUrl, invalidInfo, isReadableName, missingInfo, summaryInfo, unavailableInfo, unsupportedInfo,
} from "./lora_metadata.js";

/** States that may change on the host (the file was added or replaced, the host came back): asked again on retry. */
const RETRYABLE = new Set(["missing", "invalid", "error"]);

/**
 * @param {object} deps
 * @param {(refresh: boolean) => Promise<string[]>} deps.listNames the host's LoRA file names; may reject
 * @param {(url: string) => Promise<{status: number, body: unknown}>} deps.fetchInfo GET a host route;
 *   `body` is the parsed JSON answer (null if it was not JSON)
 */
export function createLoraInfoCache({ listNames, fetchInfo }) {
  const settled = new Map(); // name -> info
  const pending = new Map(); // name -> Promise<info>
  let refreshing = null; // one fresh names request shared by every name that the cached list lacks

  const freshNames = () => {
    refreshing ??= listNames(true).finally(() => { refreshing = null; });
    return refreshing;
  };

  /** Whether the host lists `name` (asking again once if the cached list lacks it); null if it cannot say. */
  async function isListed(name) {
    try {
      return (await listNames(false)).includes(name) || (await freshNames()).includes(name);
    } catch {
      return null; // no list: the info request itself will tell
    }
  }

  async function read(name) {
    if ((await isListed(name)) === false) return missingInfo(name);
    if (!isReadableName(name)) return unsupportedInfo(name);
    const url = infoUrl(name);
    if (url === null) return unavailableInfo(name, "the name cannot be written in a URL");
    let answer;
    try {
      answer = await fetchInfo(url);
    } catch (e) {
      return unavailableInfo(name, e?.message ?? String(e));
    }
    // A file the host cannot read is an answer about the file (200, readable: false), not a failed request.
    if (answer.status === 200 && answer.body?.readable === false) return invalidInfo(name, answer.body.reason);
    if (answer.status === 200) return summaryInfo(name, answer.body);
    if (answer.status === 404) return missingInfo(name); // removed since the list was read
    return unavailableInfo(name, `HTTP ${answer.status}${answer.body?.error ? `: ${answer.body.error}` : ""}`);
  }

  return {
    /** The info if it has been read; null for no name; undefined while unread or being read. */
    peek(name) {
      if (typeof name !== "string" || name === "") return null;
      return settled.get(name);
    },

    /** The info of `name`, read at most once (null for no name). */
    get(name) {
      if (typeof name !== "string" || name === "") return Promise.resolve(null);
      if (settled.has(name)) return Promise.resolve(settled.get(name));
      if (!pending.has(name)) {
        // A bug in reading must not leave the name pending forever; the node shows what went wrong.
        const reading = read(name).catch((e) => unavailableInfo(name, `could not read the answer: ${e?.message ?? e}`));
        pending.set(name, reading.then((info) => {
          settled.set(name, info);
          pending.delete(name);
          return info;
        }));
      }
      return pending.get(name);
    },

    /** Forgets a missing or failed answer for `name`, so the next `get` asks again (on a user's choice). */
    retry(name) {
      if (RETRYABLE.has(settled.get(name)?.state)) settled.delete(name);
    },
  };
}
