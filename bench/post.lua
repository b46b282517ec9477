-- wrk script: POSTs the JSON bodies of a file (one per line) in turn, from line START + 1 (default 0; each
-- further wrk thread from its own offset), and prints JSON lines at the end with what bench/wrk.py reads.
-- Closed loop: each connection sends its next request when the last is answered, so `-c N` is N clients.
--   wrk -t1 -c64 -d20s -s bench/post.lua http://127.0.0.1:8000 -- /classify bodies.jsonl [START [ORIGIN]]
-- With ORIGIN (a CLOCK_MONOTONIC time in seconds: Python's time.monotonic()), the time of every 200 answer,
-- in seconds after ORIGIN, so that the answers can be counted over any window inside the run.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock, bench_timespec *now);
]]
local CLOCK_MONOTONIC, now = 1, ffi.new("bench_timespec")
local requests, count, index = {}, 0, 0
local origin = nil
answered_at = {}  -- a global: done() reads it from each thread with thread:get
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, file = args[1], args[2]
  for line in io.lines(file) do
    count = count + 1
    requests[count] = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, line)
  end
  -- one back: wrk calls request() once before the first request it sends
  index = (tonumber(args[3] or "0") - 1 + (id or 0) * 7919) % count
  origin = tonumber(args[4] or "")
end

function request()
  index = index % count + 1
  return requests[index]
end

function response(status, headers, body)
  if status == 200 and origin ~= nil then
    ffi.C.clock_gettime(CLOCK_MONOTONIC, now)
    answered_at[#answered_at + 1] = string.format("%.4f", tonumber(now.tv_sec) - origin + tonumber(now.tv_nsec) * 1e-9)
  end
end

function done(summary, latency, _)
  local e = summary.errors
  -- the latency distribution as 1,000 quantiles (0.05%, 0.15%, ... 99.95%), so that the slices of a level can be
  -- pooled into one distribution (wrk's Lua API gives percentiles, not the samples)
  local quantiles = {}
  for i = 0, 999 do
    table.insert(quantiles, tostring(latency:percentile((i + 0.5) / 10)))
  end
  io.write('{"quantiles_us": [' .. table.concat(quantiles, ",") .. ']}\n')
  local times = {}
  for _, thread in ipairs(threads) do
    local answered = thread:get("answered_at")
    for i = 1, #answered do
      times[#times + 1] = answered[i]
    end
  end
  io.write('{"answered_at_s": [' .. table.concat(times, ",") .. ']}\n')
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
