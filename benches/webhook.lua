-- wrk script: signed GitHub pushes read from PAYLOADS (one per line, "<signature>
-- <body>"), cycled through, each request with a delivery id of its own, POSTed to
-- TARGET_PATH (default /webhooks/github). A run with any answer other than 2xx is a
-- failed run: `done` says how many.
local pushes = {}
for line in io.lines(os.getenv("PAYLOADS")) do
  local space = line:find(" ", 1, true)
  pushes[#pushes + 1] = { line:sub(1, space - 1), line:sub(space + 1) }
end
local target = os.getenv("TARGET_PATH") or "/webhooks/github"
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local counter = 0

function request()
  counter = counter + 1
  -- Threads start at different places, so that they send different commits.
  local push = pushes[((counter + (thread_id or 0) * 7919) % #pushes) + 1]
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = string.format("bench-%s-%d-%d", os.getenv("RUN") or "0", thread_id or 0, counter),
    ["X-Hub-Signature-256"] = push[1],
  }
  return wrk.format("POST", target, headers, push[2])
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx answers: %d\n", summary.errors.status))
  io.write(string.format("socket errors: %d\n", summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("p50 ms: %.2f\n", latency:percentile(50) / 1000))
  io.write(string.format("p99 ms: %.2f\n", latency:percentile(99) / 1000))
end
