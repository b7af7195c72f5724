#!/usr/bin/env node
// A tenantd external worker in JavaScript (Node 18+, fetch only; no
// dependencies). Typed with JSDoc, so `tsc --checkJs --noEmit` checks it
// like TypeScript. The same worker in TypeScript: examples/worker.ts.
//
//   TENANTD_URL=http://127.0.0.1:8080 TENANTD_WORKER_CREDENTIAL=<worker token or API key> \
//       node examples/worker.mjs [--max-jobs N]
//
// Same protocol as examples/worker.py: long-poll claim, heartbeat with
// progress (stop when cancel_requested), complete or fail.

/**
 * @typedef {{id: string, type: string, payload: Record<string, unknown>,
 *            lease_id: string, lease_expires_at: string, attempts: number}} ClaimedJob
 * @typedef {(payload: any, progress: (percent: number) => Promise<boolean>) => Promise<unknown>} Handler
 */

class Cancelled extends Error {}

/** @type {Record<string, Handler>} */
const HANDLERS = {
  // Declared by the operator: PUT /v1/admin/job-types/text.wordcount
  "text.wordcount": async (payload, progress) => {
    const words = String(payload.text).split(/\s+/).filter(Boolean);
    /** @type {Map<string, number>} */
    const counts = new Map();
    for (const w of words) counts.set(w.toLowerCase(), (counts.get(w.toLowerCase()) ?? 0) + 1);
    if (await progress(50)) throw new Cancelled("cancelled");
    const top = [...counts.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, 5)
      .map(([word, count]) => ({ word, count }));
    return { words: words.length, top };
  },
};

const base = (process.env.TENANTD_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const credential = process.env.TENANTD_WORKER_CREDENTIAL ?? "";

/**
 * @param {string} path
 * @param {unknown} body
 * @returns {Promise<{status: number, body: any}>}
 */
async function post(path, body) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { Authorization: `Bearer ${credential}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(40_000),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

/** @param {ClaimedJob} job */
async function runJob(job) {
  const lease = job.lease_id;
  /** @param {number} percent */
  const progress = async (percent) => {
    const r = await post(`/v1/worker/jobs/${job.id}/heartbeat`, { lease_id: lease, progress: percent });
    if (r.status === 409) throw new Cancelled("lease lost");
    return r.status === 200 && r.body.cancel_requested === true;
  };
  try {
    const result = await HANDLERS[job.type](job.payload, progress);
    return await post(`/v1/worker/jobs/${job.id}/complete`, { lease_id: lease, result });
  } catch (e) {
    const error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return await post(`/v1/worker/jobs/${job.id}/fail`, {
      lease_id: lease, error: error.slice(0, 2000), retry: false,
    });
  }
}

async function main() {
  const i = process.argv.indexOf("--max-jobs");
  const maxJobs = i > 0 ? Number(process.argv[i + 1]) : 0;
  let done = 0;
  for (;;) {
    const r = await post("/v1/worker/claim", { types: Object.keys(HANDLERS), max: 1, wait_s: 5 });
    if (r.status !== 200) {
      console.error(`claim: ${r.status} ${JSON.stringify(r.body)}`);
      await new Promise((res) => setTimeout(res, 1000));
      continue;
    }
    for (const job of /** @type {ClaimedJob[]} */ (r.body.data)) {
      const out = await runJob(job);
      console.log(JSON.stringify({ job: job.id, status: out.status, outcome: out.body?.status }));
      done++;
    }
    if (maxJobs && done >= maxJobs) return;
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
