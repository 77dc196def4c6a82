-- wrk script for bench/load_test.py: small planner queries in turn, statuses counted per thread.
local bodies = {}
local token = os.getenv("SDE_LOAD_TOKEN")
local threads = {}
local i = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = io.open(os.getenv("SDE_LOAD_BODIES"), "r")
  for line in f:lines() do table.insert(bodies, line) end
  f:close()
  fivexx, fourxx, ok = 0, 0, 0
end

function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/queries", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, bodies[i])
end

function response(status, headers, body)
  if status >= 500 then fivexx = fivexx + 1
  elseif status >= 400 then fourxx = fourxx + 1
  else ok = ok + 1 end
end

function done(summary, latency, requests)
  local t5, t4, t2 = 0, 0, 0
  for _, thread in ipairs(threads) do
    t5 = t5 + thread:get("fivexx"); t4 = t4 + thread:get("fourxx"); t2 = t2 + thread:get("ok")
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, ' ..
    '"max_ms": %.2f, "ok": %d, "4xx": %d, "5xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3, t2, t4, t5,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
