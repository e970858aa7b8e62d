-- wrk script: replay a pool of pre-built raw HTTP requests (bench/payloads.py).
--
--   BENCH_POOL=pool-file BENCH_RESULT=out.json [BENCH_START=n] [BENCH_DELAY_MS=ms] \
--     wrk -t1 -c64 -d10s -s bench/wrk/pool.lua http://127.0.0.1:8080
--
-- Each wrk thread takes every nth request of the pool (n = threads), starting
-- at BENCH_START, so no two requests of a run carry the same messageIds until
-- the pool wraps around (counted in "wrapped"). BENCH_DELAY_MS paces each
-- connection (a think time after each answer) for runs at a fixed rate.
-- done() writes the summary and latency percentiles (microseconds) as JSON.

local pool_path = os.getenv("BENCH_POOL")
local result_path = os.getenv("BENCH_RESULT")
local start = tonumber(os.getenv("BENCH_START") or "0")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(pool_path, "rb"))
   reqs = {}
   count = 0
   local idx = 0
   while true do
      local line = f:read("*l")
      if not line then break end
      local data = f:read(tonumber(line))
      if idx % nthreads == tid then
         count = count + 1
         reqs[count] = data
      end
      idx = idx + 1
   end
   f:close()
   i = math.floor(start / nthreads) % count
   wrapped = 0
   sent = 0
end

function request()
   i = i + 1
   if i > count then
      i = 1
      wrapped = wrapped + 1
   end
   sent = sent + 1
   return reqs[i]
end

if delay_ms > 0 then
   function delay()
      return delay_ms
   end
end

function done(summary, latency, requests)
   local total_wrapped, total_sent = 0, 0
   for _, t in ipairs(threads) do
      total_wrapped = total_wrapped + (t:get("wrapped") or 0)
      total_sent = total_sent + (t:get("sent") or 0)
   end
   local e = summary.errors
   local f = assert(io.open(result_path, "w"))
   f:write(string.format(
      '{"requests": %d, "sent": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}, ' ..
      '"wrapped": %d}\n',
      summary.requests, total_sent, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, total_wrapped))
   f:close()
end
