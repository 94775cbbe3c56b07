-- POST pre-signed Customer.io reporting webhooks (one per line of BODIES: timestamp, a tab,
-- the X-CIO-Signature, a tab, the body), cycling through them; each thread starts at its own
-- offset. Made by bench/reporting_ack.py.
--   BODIES=reporting.tsv wrk -t2 -c32 -d10s -s bench/wrk/reporting.lua http://127.0.0.1:8787/customerio/reporting
local lines = {}
local counter = 0
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
  local path = os.getenv("BODIES") or "/tmp/reporting.tsv"
  for line in io.lines(path) do
    local ts, sig, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
    if body then lines[#lines + 1] = {ts, sig, body} end
  end
  local tid = tonumber(wrk.thread:get("tid")) or 0
  counter = tid * math.floor(#lines / 4)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local item = lines[(counter % #lines) + 1]
  local headers = {["X-CIO-Timestamp"] = item[1], ["X-CIO-Signature"] = item[2],
                   ["Content-Type"] = "application/json"}
  return wrk.format("POST", nil, headers, item[3])
end

function done(summary, latency, requests)
  io.write(string.format("WRK_RESULT requests=%d duration_us=%d non2xx=%d errors=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
