-- wrk script: POST the body in $BENCH_BODY_FILE with $BENCH_AUTH, and print one JSON line.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

-- $BENCH_DELAY_MS: a pause before each request, so that the load is paced (scenario g).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
  delay = function() return pause end
end

-- $BENCH_DISTINCT: every request's body differs, "@N@" in it replaced by a running number
-- that starts after the number $BENCH_DISTINCT gives.
local first = tonumber(os.getenv("BENCH_DISTINCT") or "")
if first then
  local template = wrk.body
  local n = first
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, (template:gsub("@N@", tostring(n))))
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
