-- External workers driven by wrk for test/bench/jobs.sh, doing what
-- http_worker.py does at a fraction of its CPU. A wrk thread is one worker;
-- its connections share the jobs it holds (a thread's Lua state is shared
-- by its connections): a connection free while the worker holds a job not
-- yet completed completes it; one free while it holds none claims the next
-- batch of 10. So -tW -cW*K runs W workers that each have up to K requests
-- under way, as a worker that runs a batch's jobs at once and reports each
-- as it ends, without waiting for the previous report's answer; with K = 1
-- (-tW -cW) each worker claims 10, completes them one after another and
-- claims again:
--
--   TENANTD_WORKER_TOKEN=... BENCH_JOB_TYPE=bench.ext \
--       wrk -t4 -c40 -d600s -s test/bench/http_worker.lua http://127.0.0.1:PORT
--
-- A claim answers {"data": [job, ...]}, each job's "id" before its
-- "lease_id"; the bench's payloads and results hold neither key. Any answer
-- but 200 stops the worker.
local token, jtype = os.getenv("TENANTD_WORKER_TOKEN"), os.getenv("BENCH_JOB_TYPE")
assert(token and jtype, "http_worker.lua needs TENANTD_WORKER_TOKEN and BENCH_JOB_TYPE")
local headers = {
  ["Authorization"] = "Bearer " .. token,
  ["Content-Type"] = "application/json",
}
local claim_body = '{"types":["' .. jtype .. '"],"max":10,"wait_s":1}'
-- The worker's claimed jobs not yet sent for completion: ids[head..tail].
local ids, leases, head, tail = {}, {}, 1, 0

function request()
  if head <= tail then
    local id, lease = ids[head], leases[head]
    ids[head], leases[head] = nil, nil
    head = head + 1
    return wrk.format("POST", "/v1/worker/jobs/" .. id .. "/complete", headers,
                      '{"lease_id":"' .. lease .. '","result":{"ok":1}}')
  end
  return wrk.format("POST", "/v1/worker/claim", headers, claim_body)
end

function response(status, _, body)
  if status ~= 200 then
    io.stderr:write("http_worker.lua: " .. status .. " " .. body:sub(1, 200) .. "\n")
    wrk.thread:stop()
    return
  end
  if body:sub(1, 9) ~= '{"data":[' then
    return -- a completion's answer
  end
  local n, k = tail, tail
  for id in body:gmatch('"id"%s*:%s*"([0-9a-f-]+)"') do
    n = n + 1
    ids[n] = id
  end
  for lease in body:gmatch('"lease_id"%s*:%s*"([0-9a-f-]+)"') do
    k = k + 1
    leases[k] = lease
  end
  if n ~= k then
    io.stderr:write("http_worker.lua: cannot read the claim: " .. body:sub(1, 300) .. "\n")
    wrk.thread:stop()
    return
  end
  tail = n
end
