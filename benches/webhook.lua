-- wrk script: signed GitHub pushes, each with a delivery id of its own so that every
-- request plans (and durably queues) new executions.
local payload = io.open(os.getenv("PAYLOAD")):read("*a")
local signature = os.getenv("SIGNATURE")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local counter = 0
local failures = 0

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = string.format("bench-%s-%d-%d", os.getenv("RUN") or "0", thread_id or 0, counter),
    ["X-Hub-Signature-256"] = signature,
  }
  return wrk.format("POST", "/webhooks/github", headers, payload)
end

function response(status)
  if status ~= 202 then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("non-202 answers: %d\n", summary.errors.status))
end
