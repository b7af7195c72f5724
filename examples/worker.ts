#!/usr/bin/env node
// A tenantd external worker in TypeScript (Node 18+, fetch only; no runtime
// dependencies). Type-check and build it with TypeScript and Node's types
// (the settings are in examples/tsconfig.json), then run the JavaScript:
//
//   npm install --no-save typescript @types/node@20
//   npx tsc -p examples/tsconfig.json --outDir /tmp/worker
//   TENANTD_URL=http://127.0.0.1:8080 TENANTD_WORKER_CREDENTIAL=<worker token or API key> \
//       node /tmp/worker/worker.js [--max-jobs N]
//
// Same protocol as examples/worker.py and examples/worker.mjs: long-poll
// claim, heartbeat with progress (stop when cancel_requested), complete or
// fail. test/e2e/test_worker_api.py type-checks it, builds it and runs a job.

/** A job as POST /v1/worker/claim answers it. */
interface ClaimedJob {
  id: string;
  org_id: string;
  type: string;
  payload: Record<string, unknown>;
  lease_id: string;
  lease_expires_at: string;
  attempts: number;
}

/** Reports progress (0..100); resolves true when the job's cancel was requested. */
type Progress = (percent: number) => Promise<boolean>;
type Handler = (payload: Record<string, unknown>, progress: Progress) => Promise<unknown>;

interface Answer<T> {
  status: number;
  body: T | null;
}

interface ClaimAnswer {
  data: ClaimedJob[];
}

interface HeartbeatAnswer {
  lease_expires_at: string;
  cancel_requested: boolean;
}

/** The job as complete/fail answer it (only what this worker reads). */
interface JobAnswer {
  id: string;
  status: "queued" | "running" | "succeeded" | "failed" | "cancelled";
}

class Cancelled extends Error {
  override name = "Cancelled";
}

interface WordCount {
  words: number;
  top: { word: string; count: number }[];
}

const HANDLERS: Record<string, Handler> = {
  // Declared by the operator: PUT /v1/admin/job-types/text.wordcount
  "text.wordcount": async (payload, progress): Promise<WordCount> => {
    const words = String(payload["text"] ?? "").split(/\s+/).filter(Boolean);
    const counts = new Map<string, number>();
    for (const w of words) {
      const k = w.toLowerCase();
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    if (await progress(50)) throw new Cancelled("cancelled");
    const top = [...counts.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, 5)
      .map(([word, count]) => ({ word, count }));
    return { words: words.length, top };
  },
};

const base = (process.env["TENANTD_URL"] ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const credential = process.env["TENANTD_WORKER_CREDENTIAL"] ?? "";

async function post<T>(path: string, body: unknown): Promise<Answer<T>> {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { Authorization: `Bearer ${credential}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(40_000), // above the longest wait_s (30)
  });
  const text = await r.text();
  return { status: r.status, body: text ? (JSON.parse(text) as T) : null };
}

async function runJob(job: ClaimedJob): Promise<Answer<JobAnswer>> {
  const lease = job.lease_id;
  const progress: Progress = async (percent) => {
    const r = await post<HeartbeatAnswer>(`/v1/worker/jobs/${job.id}/heartbeat`, {
      lease_id: lease,
      progress: percent,
    });
    if (r.status === 409) throw new Cancelled("lease lost");
    return r.status === 200 && r.body?.cancel_requested === true;
  };
  const handler = HANDLERS[job.type];
  try {
    if (!handler) throw new Error(`no handler for ${job.type}`);
    const result = await handler(job.payload, progress);
    return await post<JobAnswer>(`/v1/worker/jobs/${job.id}/complete`, { lease_id: lease, result });
  } catch (e: unknown) {
    const error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return await post<JobAnswer>(`/v1/worker/jobs/${job.id}/fail`, {
      lease_id: lease,
      error: error.slice(0, 2000),
      retry: false,
    });
  }
}

async function main(): Promise<void> {
  const i = process.argv.indexOf("--max-jobs");
  const maxJobs = i > 0 ? Number(process.argv[i + 1]) : 0;
  let done = 0;
  for (;;) {
    const r = await post<ClaimAnswer>("/v1/worker/claim", {
      types: Object.keys(HANDLERS),
      max: 1,
      wait_s: 5,
    });
    if (r.status !== 200 || !r.body) {
      console.error(`claim: ${r.status} ${JSON.stringify(r.body)}`);
      await new Promise((res) => setTimeout(res, 1000));
      continue;
    }
    for (const job of r.body.data) {
      const out = await runJob(job);
      console.log(JSON.stringify({ job: job.id, status: out.status, outcome: out.body?.status }));
      done++;
    }
    if (maxJobs && done >= maxJobs) return;
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
