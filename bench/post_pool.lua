-- wrk script: POST a pool of pre-signed Standard Webhooks requests, each sent once.
-- Usage: wrk -s bench/post_pool.lua URL -- POOL_FILE NTHREADS PATH [stream]
-- POOL_FILE lines: webhook-id \t webhook-timestamp \t webhook-signature \t JSON body.
-- Thread k takes lines k, k+N, k+2N…; when its share runs out it starts again, and the repeats
-- are answered 200 (duplicates) — counted apart, so a too-small pool shows in the figures.
-- "stream": read the pool line by line as requests go out instead of holding it all (a pool of
-- large bodies can be gigabytes); it costs wrk a line's parse per request.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs = {}
local i = 0
n202, n200, nother = 0, 0, 0

local stream, pool_file, pool_path, share, hook_path = false, nil, nil, 1, nil

local function format(line)
  local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  return wrk.format("POST", hook_path, {
    ["Content-Type"] = "application/json", ["webhook-id"] = id,
    ["webhook-timestamp"] = ts, ["webhook-signature"] = sig }, body)
end

local n_read = 0
local function next_streamed()
  while true do
    local line = pool_file:read("*l")
    if line == nil then  -- the pool ran out: from the top again (repeats, counted apart)
      pool_file:close(); pool_file = io.open(pool_path); n_read = 0
    else
      n_read = n_read + 1
      if (n_read - 1) % share == tid then return format(line) end
    end
  end
end

function init(args)
  local pool, nthreads, path = args[1], tonumber(args[2]), args[3]
  hook_path, share, pool_path = path, nthreads, pool
  if args[4] == "stream" then
    stream, pool_file = true, io.open(pool)
    return
  end
  local n = 0
  for line in io.lines(pool) do
    if n % nthreads == tid then
      local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json", ["webhook-id"] = id,
        ["webhook-timestamp"] = ts, ["webhook-signature"] = sig }, body)
    end
    n = n + 1
  end
end

function request()
  if stream then return next_streamed() end
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end

function response(status, headers, body)
  if status == 202 then n202 = n202 + 1
  elseif status == 200 then n200 = n200 + 1
  else nother = nother + 1 end
end

function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("n202"); b = b + t:get("n200"); c = c + t:get("nother")
  end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "errors_connect": %d, "errors_read": %d, ' ..
    '"errors_timeout": %d, "n202": %d, "n200": %d, "nother": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.timeout, a, b, c, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
