// Each LoRA file's display info, read once per file name per page and shared by every node that shows it.
//
// No host import: the owner passes in how to list the loras folder and how to fetch a URL, so the
// request logic runs under `node --test` with fakes. A name the host does not list is reported as
// missing without asking for its metadata: the host answers such a request with a 404, which the
// browser logs as a console error.

import {
  hasReadableMetadata, metadataInfo, metadataUrl, missingInfo, noMetadataInfo, unavailableInfo, unsupportedInfo,
} from "./lora_metadata.js";

/** States that may change without the file changing (it was added, the host came back): asked again on retry. */
const RETRYABLE = new Set(["missing", "error"]);

/**
 * @param {object} deps
 * @param {(refresh: boolean) => Promise<string[]>} deps.listNames the host's LoRA file names; may reject
 * @param {(url: string) => Promise<{status: number, body: unknown}>} deps.fetchMetadata GET a host route;
 *   `body` is the parsed JSON of a 200 answer
 */
export function createLoraInfoCache({ listNames, fetchMetadata }) {
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
      return null; // no list: the metadata request itself will tell
    }
  }

  async function read(name) {
    if ((await isListed(name)) === false) return missingInfo(name);
    if (!hasReadableMetadata(name)) return unsupportedInfo(name);
    const url = metadataUrl(name);
    if (url === null) return unavailableInfo(name, "the name cannot be written in a URL");
    let answer;
    try {
      answer = await fetchMetadata(url);
    } catch (e) {
      return unavailableInfo(name, e?.message ?? String(e));
    }
    // The host answers 404 for a file without `__metadata__` (and for one whose header is over 1 MiB).
    if (answer.status === 404) return noMetadataInfo(name);
    if (answer.status !== 200) return unavailableInfo(name, `HTTP ${answer.status}`);
    return metadataInfo(name, answer.body);
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
