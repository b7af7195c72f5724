-- An external worker driven by wrk for test/bench/jobs.sh, doing what
-- http_worker.py does at a fraction of its CPU: claim batches of 10 jobs,
-- complete each, claim again. Run it with one connection per thread
-- (wrk -tN -cN), so that a thread's state is its connection's:
--
--   TENANTD_WORKER_TOKEN=... BENCH_JOB_TYPE=bench.ext \
--       wrk -t4 -c4 -d600s -s test/bench/http_worker.lua http://127.0.0.1:PORT
--
-- A claim answers {"data": [job, ...]}, each job's "id" before its
-- "lease_id"; the bench's payloads and results hold neither key. Any answer
-- but 200 stops the thread's run.
local token, jtype = os.getenv("TENANTD_WORKER_TOKEN"), os.getenv("BENCH_JOB_TYPE")
assert(token and jtype, "http_worker.lua needs TENANTD_WORKER_TOKEN and BENCH_JOB_TYPE")
local headers = {
  ["Authorization"] = "Bearer " .. token,
  ["Content-Type"] = "application/json",
}
local claim_body = '{"types":["' .. jtype .. '"],"max":10,"wait_s":1}'
local ids, leases, next_i = {}, {}, 1

function request()
  local id = ids[next_i]
  if id then
    local lease = leases[next_i]
    next_i = next_i + 1
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
  ids, leases, next_i = {}, {}, 1
  for id in body:gmatch('"id"%s*:%s*"([0-9a-f-]+)"') do
    ids[#ids + 1] = id
  end
  for lease in body:gmatch('"lease_id"%s*:%s*"([0-9a-f-]+)"') do
    leases[#leases + 1] = lease
  end
  if #ids ~= #leases then
    io.stderr:write("http_worker.lua: cannot read the claim: " .. body:sub(1, 300) .. "\n")
    wrk.thread:stop()
  end
end
