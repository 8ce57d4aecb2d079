-- wrk script of the benchmark: the bearer token and an optional Cache-Control request header from
-- the environment, and one JSON line of results at the end (read by bench/runner.py).
--   BENCH_TOKEN          access token sent as "Authorization: Bearer <token>"
--   BENCH_CACHE_CONTROL  e.g. "no-cache": skip taskapp's HTTP response layer
--   BENCH_COUNT_STATUS   "1": count responses by status class (a Lua call per response, so only
--                        for the Redis-hung runs, where 5xx must be counted)

local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
local cache_control = os.getenv("BENCH_CACHE_CONTROL")
if cache_control and cache_control ~= "" then
  wrk.headers["Cache-Control"] = cache_control
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if os.getenv("BENCH_COUNT_STATUS") == "1" then
  s2, s3, s4, s5 = 0, 0, 0, 0
  function response(status, headers, body)
    if status >= 500 then s5 = s5 + 1
    elseif status >= 400 then s4 = s4 + 1
    elseif status >= 300 then s3 = s3 + 1
    else s2 = s2 + 1 end
  end
end

function done(summary, latency, requests)
  local c = {s2 = 0, s3 = 0, s4 = 0, s5 = 0}
  for _, t in ipairs(threads) do
    for k, _ in pairs(c) do
      c[k] = c[k] + (tonumber(t:get(k)) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"non_2xx_3xx":%d,"timeouts":%d,' ..
    '"status_2xx":%d,"status_3xx":%d,"status_4xx":%d,"status_5xx":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout,
    c.s2, c.s3, c.s4, c.s5))
end
