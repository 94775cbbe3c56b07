-- POST pre-generated webhook bodies (one per line of BODIES, default /tmp/bodies.jsonl),
-- cycling through them. Every "@@UUID@@" in a body becomes a fresh uuid (per thread and
-- request, salted by SALT so two runs never repeat a uuid), so no event is a duplicate the
-- connector would skip cheaply.
--   BODIES=bodies.jsonl wrk -t2 -c32 -d10s -s bench/wrk/webhook.lua http://127.0.0.1:8787/webhook
local bodies = {}
local counter = 0
local tid = 0
local salt = 0
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("BODIES") or "/tmp/bodies.jsonl"
  for line in io.lines(path) do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  tid = tonumber(wrk.thread:get("tid")) or 0
  salt = (tonumber(os.getenv("SALT") or "0") or 0) % 4294967296
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function fresh_uuid()
  counter = counter + 1
  return string.format("%08x-%04x-7000-8000-%012x", salt, tid, counter)
end

function request()
  local body = bodies[(counter % #bodies) + 1]
  body = body:gsub("@@UUID@@", fresh_uuid)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("WRK_RESULT requests=%d duration_us=%d non2xx=%d errors=%d p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
