#!/usr/bin/env python3
"""A tenantd external worker in plain Python (standard library only).

It long-polls POST /v1/worker/claim for the job types it knows, runs each
job, sends heartbeats with progress while it works (stopping early when the
job's cancel was requested) and reports the outcome with complete or fail.

    TENANTD_URL=http://127.0.0.1:8080 TENANTD_WORKER_CREDENTIAL=<worker token or API key> \
        python3 examples/worker.py [--concurrency N] [--max-jobs N] [--idle-exit S]

With --concurrency N it runs up to N jobs at once, each in its own thread,
and reports each as it ends: reports arriving together share one statement
at the database, so a busy worker gets more done than N workers that each
wait for every answer.

The credential is the operator's TENANTD_WORKER_TOKEN (jobs of every org) or
an API key created with role "worker" (its org's jobs only).

The example type is `text.wordcount` (declare it first, as the operator):

    PUT /v1/admin/job-types/text.wordcount
    {"cost": 1, "timeout_s": 60,
     "payload_schema": {"type": "object", "required": ["text"],
                        "properties": {"text": {"type": "string", "maxLength": 100000}}}}

Add your own types to HANDLERS: a function (payload, progress) -> result,
where progress(percent) heartbeats and returns True when the job was
cancelled (then stop and raise Cancelled).
"""
import argparse
import concurrent.futures
import json
import os
import sys
import time
import urllib.error
import urllib.request


class Cancelled(Exception):
    """The job's cancel was requested: report it failed, without retry."""


class Retryable(Exception):
    """A failure worth another attempt (tenantd retries with backoff)."""


def wordcount(payload, progress):
    words = payload["text"].split()
    counts = {}
    for i, w in enumerate(words):
        counts[w.lower()] = counts.get(w.lower(), 0) + 1
        # Heartbeat now and then: it keeps the lease and reports progress.
        if i % 1000 == 999 and progress(int(100 * i / len(words))):
            raise Cancelled()
    delay = float(payload.get("delay_s", 0))  # lets the tests hold a job for a while
    end = time.time() + delay
    while time.time() < end:
        if progress(50):
            raise Cancelled()
        time.sleep(min(0.2, max(0.0, end - time.time())))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {"words": len(words), "top": [{"word": w, "count": c} for w, c in top]}


HANDLERS = {"text.wordcount": wordcount}


class Client:
    def __init__(self, base, credential):
        self.base = base.rstrip("/")
        self.credential = credential

    def post(self, path, body, timeout=40):
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": "Bearer " + self.credential,
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def run_job(client, job):
    jid, lease = job["id"], job["lease_id"]

    def progress(percent):
        status, body = client.post(f"/v1/worker/jobs/{jid}/heartbeat",
                                   {"lease_id": lease, "progress": percent})
        if status == 409:  # our lease lapsed: someone else has the job now
            raise Cancelled()
        return status == 200 and body["cancel_requested"]

    try:
        result = HANDLERS[job["type"]](job["payload"], progress)
    except Cancelled:
        return client.post(f"/v1/worker/jobs/{jid}/fail",
                           {"lease_id": lease, "error": "cancelled", "retry": False})
    except Retryable as e:
        return client.post(f"/v1/worker/jobs/{jid}/fail",
                           {"lease_id": lease, "error": str(e)[:2000], "retry": True})
    except Exception as e:  # a bug in the handler: do not retry
        return client.post(f"/v1/worker/jobs/{jid}/fail",
                           {"lease_id": lease, "error": f"{type(e).__name__}: {e}"[:2000]})
    return client.post(f"/v1/worker/jobs/{jid}/complete", {"lease_id": lease, "result": result})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-jobs", type=int, default=0, help="exit after this many jobs (0: never)")
    ap.add_argument("--idle-exit", type=float, default=0,
                    help="exit after this many seconds without a job (0: never)")
    ap.add_argument("--concurrency", type=int, default=1, help="jobs run at once (1..100)")
    ap.add_argument("--batch", type=int, default=0,
                    help="jobs claimed at once, at most --concurrency (default: --concurrency)")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 100 or not 0 <= args.batch <= 100:
        ap.error("--concurrency and --batch are 1..100")
    batch = args.batch or args.concurrency
    client = Client(os.environ.get("TENANTD_URL", "http://127.0.0.1:8080"),
                    os.environ["TENANTD_WORKER_CREDENTIAL"])
    done, idle_since = 0, time.time()
    running = {}  # future -> job
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        while True:
            # Jobs that ended (their threads reported them): log them.
            finished = [f for f in running if f.done()]
            if not finished and len(running) == args.concurrency:
                finished = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED).done
            for f in finished:
                job = running.pop(f)
                status, answer = f.result()
                print(json.dumps({"job": job["id"], "status": status,
                                  "outcome": (answer or {}).get("status")}), flush=True)
                done += 1
                idle_since = time.time()
            if args.max_jobs and done >= args.max_jobs:
                return 0
            if args.idle_exit and not running and time.time() - idle_since > args.idle_exit:
                return 0
            want = min(batch, args.concurrency - len(running))
            if args.max_jobs:
                want = min(want, args.max_jobs - done - len(running))
            if want <= 0:
                concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                continue
            # With jobs running, a short long-poll: their ends are logged
            # and their slots refilled within a second.
            status, body = client.post("/v1/worker/claim", {
                "types": sorted(HANDLERS), "max": want, "wait_s": 1 if running else 5})
            if status != 200:
                print(f"claim: {status} {body}", file=sys.stderr)
                time.sleep(1)
                continue
            for job in body["data"]:
                running[pool.submit(run_job, client, job)] = job


if __name__ == "__main__":
    sys.exit(main())
