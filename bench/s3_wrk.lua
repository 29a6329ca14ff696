-- wrk script for bench/s3.py: replays presigned URLs (one per line in a file), PUT with a
-- fixed body of a given size or GET; requests are built once in init(), so the client's CPU
-- per request is a table lookup.
--   wrk ... -s bench/s3_wrk.lua URL -- URLFILE METHOD SIZE
local reqs = {}
local n = 0
local i = 0

function init(args)
  local file, method, size = args[1], args[2], tonumber(args[3] or "0")
  local body = nil
  if method == "PUT" then
    -- one fixed body: non-zero, every 4 KiB block numbered, so nothing dedups within it
    local block = {}
    for k = 1, 4096 do block[k] = string.char((k * 131 + 7) % 251) end
    local b = table.concat(block)
    local parts = {}
    local left = size
    local salt = 0
    while left > 0 do
      salt = salt + 1
      local piece = string.format("%016d", salt) .. b:sub(17)
      if #piece > left then piece = piece:sub(1, left) end
      parts[#parts + 1] = piece
      left = left - #piece
    end
    body = table.concat(parts)
  end
  for line in io.lines(file) do
    if #line > 0 then
      local target = line:match("^https?://[^/]+(/.*)$")
      n = n + 1
      reqs[n] = wrk.format(method, target, nil, body)
    end
  end
  -- each thread starts at a different place in the list
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
